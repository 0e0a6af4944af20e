/**
 * The benches' HTTP/1.1 client for streamed calls: Node's `http.request`,
 * the same for llama-server and for the service's Connect protocol, so that
 * what the two servers are compared through is one client stack.
 */
import { type IncomingMessage, request } from "node:http";

/**
 * POSTs `body` on a connection of its own (no keep-alive pool: a pooled
 * connection that the server closed while idle would fail the next request);
 * resolves with the response as soon as its head arrives, to be read as it streams.
 */
export function postOnItsOwnConnection(
  port: number,
  path: string,
  headers: Record<string, string>,
  body: string | Uint8Array,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method: "POST", agent: false, headers }, resolve);
    req.once("error", reject);
    req.end(body);
  });
}
