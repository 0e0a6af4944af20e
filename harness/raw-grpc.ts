/**
 * gRPC by hand over Node's HTTP/2 client, for the fuzzer and the bad-input
 * tests: frames whose flag and length may lie, sent as given, and the status
 * read back from headers or trailers.
 */
import type http2 from "node:http2";

/** A gRPC message frame: flag byte, 4-byte length, payload. `declaredLength` may differ from the payload's. */
export function grpcFrame(payload: Buffer, options: { compressed?: boolean; declaredLength?: number } = {}): Buffer {
  const head = Buffer.alloc(5);
  head[0] = options.compressed ? 1 : 0;
  head.writeUInt32BE(options.declaredLength ?? payload.length, 1);
  return Buffer.concat([head, payload]);
}

export interface RawGrpcResult {
  /** The HTTP status of the response. */
  http: number;
  /** `grpc-status` from the headers or trailers, when there was one. */
  grpc?: string;
  /** `grpc-message`, percent-decoded. */
  message?: string;
  /** The trailers as sent (empty for a trailers-only response, whose status is in the headers). */
  trailers: http2.IncomingHttpHeaders;
  /** Milliseconds from the request to its first DATA frame, when one came. */
  firstDataMs?: number;
}

/** One call on `session` with `body` as the request bytes; rejects on an HTTP/2 error. */
export function rawGrpcCall(
  session: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  headers: { contentType?: string; timeout?: string; encoding?: string } = {},
): Promise<RawGrpcResult> {
  return new Promise((resolve, reject) => {
    const sent = performance.now();
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": headers.contentType ?? "application/grpc",
      te: "trailers",
      ...(headers.timeout ? { "grpc-timeout": headers.timeout } : {}),
      ...(headers.encoding ? { "grpc-encoding": headers.encoding } : {}),
    });
    const result: RawGrpcResult = { http: 0, trailers: {} };
    const read = (h: http2.IncomingHttpHeaders) => {
      result.grpc = (h["grpc-status"] as string | undefined) ?? result.grpc;
      const message = h["grpc-message"] as string | undefined;
      if (message !== undefined) result.message = decodeURIComponent(message);
    };
    req.on("response", (h) => {
      result.http = Number(h[":status"]);
      read(h);
    });
    req.on("trailers", (t) => {
      result.trailers = t;
      read(t);
    });
    req.on("data", () => {
      result.firstDataMs ??= performance.now() - sent;
    });
    req.on("end", () => resolve(result));
    req.on("error", reject);
    req.end(body);
  });
}
