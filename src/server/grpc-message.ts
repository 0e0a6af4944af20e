/**
 * gRPC's `grpc-message` is percent-encoded, but only for bytes outside
 * printable ASCII and for "%" (the gRPC HTTP/2 spec). connect-node encodes
 * it with encodeURIComponent, which also escapes ",", ":", ";", "+", "="…, and
 * grpc-js decodes with decodeURI, which leaves those escaped: a grpc-js user
 * would read "must be in [0%2C 2]". Re-encoding to the spec's minimal form
 * reads correctly in every decoder.
 */
import type http from "node:http";
import type http2 from "node:http2";

export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function reencode(headers: unknown): void {
  if (!headers || typeof headers !== "object") return;
  const record = headers as Record<string, unknown>;
  const value = record["grpc-message"];
  if (typeof value !== "string") return;
  let decoded: string;
  try {
    decoded = decodeURIComponent(value);
  } catch {
    return;
  }
  record["grpc-message"] = encodeGrpcMessage(decoded);
}

/** Rewrites `grpc-message` in the headers and trailers this response sends. */
export function useSpecGrpcMessage(res: http.ServerResponse | http2.Http2ServerResponse): void {
  const writeHead = res.writeHead.bind(res) as (...args: unknown[]) => unknown;
  const addTrailers = res.addTrailers.bind(res) as (headers: unknown) => void;
  (res as { writeHead: unknown }).writeHead = (...args: unknown[]) => {
    for (const arg of args) reencode(arg);
    return writeHead(...args);
  };
  (res as { addTrailers: unknown }).addTrailers = (headers: unknown) => {
    reencode(headers);
    addTrailers(headers);
  };
}
