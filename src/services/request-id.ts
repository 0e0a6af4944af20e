/**
 * What a call carries from its connection: the request id (the client's
 * `x-request-id` when it sends a reasonable one, a fresh one otherwise;
 * logged with every line of the call and sent back in the response headers),
 * and the connection's measured round trip when there is one.
 */
import { randomUUID } from "node:crypto";
import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";

export const requestIdKey = createContextKey<string>("", { description: "request id" });

/** The latest HTTP/2 PING round trip of the call's connection, in ms (undefined over HTTP/1.1, or not yet measured). */
export const roundTripKey = createContextKey<number | undefined>(undefined, { description: "connection round trip" });

export function requestContextValues(
  headers: { [name: string]: string | string[] | undefined },
  roundTripMs?: number,
): ContextValues {
  const given = headers["x-request-id"];
  const id = typeof given === "string" && /^[\w.:-]{1,128}$/.test(given) ? given : randomUUID();
  return createContextValues().set(requestIdKey, id).set(roundTripKey, roundTripMs);
}
