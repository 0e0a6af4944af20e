/**
 * The admin door: `authorization: Bearer <token>` against the configured
 * token, compared in constant time (as SHA-256 digests, so lengths leak
 * nothing either). The token never appears in an error or a log.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";

const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();

export function createAdminCheck(token: string | undefined): (ctx: HandlerContext) => void {
  const expected = token === undefined ? undefined : digest(token);
  return (ctx) => {
    if (expected === undefined) {
      throw new ConnectError(
        "admin RPCs are disabled on this server: start it with AIRAVATA_ADMIN_TOKEN (or --admin-token-file) to enable them",
        Code.PermissionDenied,
      );
    }
    const header = ctx.requestHeader.get("authorization");
    if (!header) throw new ConnectError("admin RPCs need the header `authorization: Bearer <admin token>`", Code.Unauthenticated);
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw new ConnectError("the authorization header must be `Bearer <admin token>`", Code.Unauthenticated);
    if (!timingSafeEqual(digest(match[1]!), expected)) {
      throw new ConnectError("the admin token is not valid", Code.PermissionDenied);
    }
  };
}
