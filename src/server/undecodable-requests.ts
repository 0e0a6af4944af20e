/**
 * Request bytes that do not decode are the client's fault: INVALID_ARGUMENT
 * (HTTP 400 for Connect) with the decoder's reason, as connect-go answers a
 * message it cannot unmarshal. connect-es answers them INTERNAL ("parse
 * binary: …"), the code this service keeps for its own faults, and decodes
 * before any interceptor runs for a unary method. So:
 *
 * - a unary method's handler first reads the request (bounded by the size
 *   limit) and decodes it itself; bytes that do not decode are replaced by an
 *   empty message and the reason is left in the call's context values, where
 *   the interceptor below refuses the call with it — connect-es then writes
 *   that status in whichever protocol the call speaks;
 * - a streaming method decodes its requests as its implementation reads them,
 *   inside the interceptor chain, so the interceptor re-codes the decoder's
 *   INTERNAL as INVALID_ARGUMENT there.
 *
 * Only the decoding is judged here: a frame whose length lies, an oversized
 * one or a wrong content type reach connect-es untouched and get its answers
 * (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, 415).
 */
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { type DescMessage, fromBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextKey,
  createContextValues,
  type Interceptor,
} from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";

/** Why the request of a unary call did not decode; set by the handler, read by the interceptor. */
const undecodableKey = createContextKey<string | undefined>(undefined, { description: "why the request did not decode" });

/** gRPC and gRPC-Web with protobuf: length-prefixed frames. */
const FRAMED_PROTO = /^application\/grpc(-web)?(\+proto)?$/i;
/** The Connect protocol's unary protobuf body: the message bytes as they are. */
const CONNECT_UNARY_PROTO = /^application\/proto$/i;
/** A frame's flag bit for a compressed message. */
const COMPRESSED = 0x01;

/** How connect-es words the two failures that are the request's, not the server's (it codes them INTERNAL). */
const PARSE_FAILURE_PREFIX = "parse binary: ";
const UNDECLARED_COMPRESSION = "received compressed envelope, but do not know how to decompress";

function isRequestDecodeFailure(error: unknown): error is ConnectError {
  return (
    error instanceof ConnectError &&
    error.code === Code.Internal &&
    (error.rawMessage.startsWith(PARSE_FAILURE_PREFIX) || error.rawMessage === UNDECLARED_COMPRESSION)
  );
}

function asInvalidArgument(error: ConnectError): ConnectError {
  return new ConnectError(error.rawMessage, Code.InvalidArgument, error.metadata, undefined, error);
}

/** Refuses a unary call whose request did not decode; re-codes a streaming call's decoding failures. */
export const undecodableRequestInterceptor: Interceptor = (next) => async (req) => {
  const reason = req.contextValues.get(undecodableKey);
  if (reason !== undefined) throw new ConnectError(reason, Code.InvalidArgument);
  if (!req.stream) return next(req);
  const messages = req.message;
  async function* recoded() {
    try {
      yield* messages;
    } catch (error) {
      throw isRequestDecodeFailure(error) ? asInvalidArgument(error) : error;
    }
  }
  return next({ ...req, message: recoded() });
};

/**
 * The body's bytes, read up to `limit`. When there are more, `bytes` is
 * undefined and `body` replays what was read, then the rest; `body` also
 * replays a read error where it happened.
 */
async function readBounded(
  source: AsyncIterable<Uint8Array>,
  limit: number,
): Promise<{ bytes?: Buffer; body: AsyncIterable<Uint8Array> }> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const it = source[Symbol.asyncIterator]();
  let failure: { error: unknown } | undefined;
  let done = false;
  try {
    while (size <= limit) {
      const next = await it.next();
      if (next.done) {
        done = true;
        break;
      }
      chunks.push(next.value);
      size += next.value.byteLength;
    }
  } catch (error) {
    failure = { error };
  }
  async function* replay() {
    yield* chunks;
    if (failure) throw failure.error;
    if (!done) for (let next = await it.next(); !next.done; next = await it.next()) yield next.value;
  }
  return { bytes: done && !failure ? Buffer.concat(chunks) : undefined, body: replay() };
}

/** The bytes as sent before compression, or undefined when they cannot be had (connect-es then answers). */
function uncompressed(bytes: Buffer, encoding: string | null, maxBytes: number): Buffer | undefined {
  try {
    switch (encoding ?? "identity") {
      case "identity":
        return bytes;
      case "gzip":
        return gunzipSync(bytes, { maxOutputLength: maxBytes });
      case "br":
        return brotliDecompressSync(bytes, { maxOutputLength: maxBytes });
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}

/** Why `body` does not decode as `input` (undefined: it does, or connect-es judges it). */
function decodeFailure(input: DescMessage, req: UniversalServerRequest, body: Buffer, maxBytes: number): string | undefined {
  const contentType = req.header.get("content-type") ?? "";
  let message: Buffer | undefined;
  if (CONNECT_UNARY_PROTO.test(contentType)) {
    message = uncompressed(body, req.header.get("content-encoding"), maxBytes);
  } else {
    // One whole frame; anything else (cut short, two frames, a length that lies) is connect-es's to answer.
    if (body.length < 5 || body.readUInt32BE(1) !== body.length - 5) return undefined;
    const payload = body.subarray(5);
    if ((body[0]! & COMPRESSED) === 0) message = payload;
    else {
      const encoding = req.header.get("grpc-encoding");
      if (encoding === null || encoding === "identity") {
        return UNDECLARED_COMPRESSION;
      }
      message = uncompressed(payload, encoding, maxBytes);
    }
  }
  if (message === undefined) return undefined;
  try {
    fromBinary(input, message);
    return undefined;
  } catch (error) {
    return `${PARSE_FAILURE_PREFIX}${error instanceof Error ? error.message : String(error)}`;
  }
}

/** An empty message in the call's framing: what connect-es decodes in place of bytes that do not. */
function emptyRequest(req: UniversalServerRequest): { header: Headers; body: AsyncIterable<Uint8Array> } {
  const header = new Headers(req.header);
  header.delete("content-encoding");
  header.delete("content-length");
  const framed = FRAMED_PROTO.test(header.get("content-type") ?? "");
  const bytes = framed ? new Uint8Array(5) : new Uint8Array(0);
  return {
    header,
    body: (async function* () {
      yield bytes;
    })(),
  };
}

function checkingUnary(handler: UniversalHandler, maxBytes: number): UniversalHandler {
  const input = handler.method.input;
  const check = async (req: UniversalServerRequest) => {
    const contentType = req.header.get("content-type") ?? "";
    const body = req.body;
    if (
      req.method !== "POST" ||
      !(FRAMED_PROTO.test(contentType) || CONNECT_UNARY_PROTO.test(contentType)) ||
      typeof body !== "object" ||
      body === null ||
      !(Symbol.asyncIterator in body)
    ) {
      return handler(req);
    }
    // A frame's head is 5 bytes; a longer body is over the limit and connect-es refuses it.
    const read = await readBounded(body, maxBytes + 5);
    const reason = read.bytes && decodeFailure(input, req, read.bytes, maxBytes);
    if (reason === undefined) return handler({ ...req, body: read.body });
    const contextValues = req.contextValues ?? createContextValues();
    contextValues.set(undecodableKey, reason);
    return handler({ ...req, ...emptyRequest(req), contextValues });
  };
  return Object.assign(check, handler);
}

/**
 * Makes every unary method of `router` check its request's decoding first
 * (call after the services are registered; `undecodableRequestInterceptor`
 * must be among the router's interceptors).
 */
export function checkUnaryRequests(router: ConnectRouter, maxBytes: number): void {
  const handlers = router.handlers;
  for (let i = 0; i < handlers.length; i++) {
    const handler = handlers[i]!;
    if (handler.method.methodKind === "unary") handlers[i] = checkingUnary(handler, maxBytes);
  }
}
