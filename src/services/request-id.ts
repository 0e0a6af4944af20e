/**
 * The request id of a call: the client's `x-request-id` when it sends a
 * reasonable one, a fresh one otherwise. Logged with every line of the call
 * and sent back in the response headers.
 */
import { randomUUID } from "node:crypto";
import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";

export const requestIdKey = createContextKey<string>("", { description: "request id" });

export function requestContextValues(headers: { [name: string]: string | string[] | undefined }): ContextValues {
  const given = headers["x-request-id"];
  const id = typeof given === "string" && /^[\w.:-]{1,128}$/.test(given) ? given : randomUUID();
  return createContextValues().set(requestIdKey, id);
}
