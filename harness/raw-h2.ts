/**
 * A bare HTTP/2 client that writes frames itself, for the tests and the fuzzer
 * to do what a client is not supposed to do (open more streams than the server allows): Node's
 * own client holds such streams back until the server has room. It encodes
 * request headers as HPACK literals and records the server's frames by type
 * and stream, without decoding their headers.
 */
import { connect, type Socket } from "node:net";
import { grpcFrame } from "./raw-grpc.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 } as const;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const ACK = 0x1;

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK "literal header field without indexing, new name", no Huffman (names and values under 127 bytes). */
function literal(name: string, value: string): Buffer {
  const n = Buffer.from(name);
  const v = Buffer.from(value);
  if (n.length > 126 || v.length > 126) throw new Error("header too long for this encoder");
  return Buffer.concat([Buffer.from([0x00, n.length]), n, Buffer.from([v.length]), v]);
}

export class RawH2 {
  readonly frames: Frame[] = [];
  private buffered = Buffer.alloc(0);
  private nextStream = 1;
  private constructor(
    private readonly socket: Socket,
    readonly closed: Promise<void>,
  ) {
    socket.on("data", (chunk: Buffer) => this.read(chunk));
  }

  /** Connects (from `localAddress`, another loopback address, to look like another client), exchanges settings, and acknowledges the server's (so its limits apply). */
  static async connect(port: number, localAddress?: string, timeoutMs = 10_000): Promise<RawH2> {
    const socket = connect({ port, host: "127.0.0.1", localAddress });
    socket.on("error", () => {});
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const client = new RawH2(socket, closed);
    socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    try {
      await client.until((f) => f.type === FRAME.SETTINGS && (f.flags & ACK) === 0, "the server's settings", timeoutMs);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  private read(chunk: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    while (this.buffered.length >= 9) {
      const length = this.buffered.readUIntBE(0, 3);
      if (this.buffered.length < 9 + length) break;
      const f: Frame = {
        type: this.buffered[3]!,
        flags: this.buffered[4]!,
        stream: this.buffered.readUInt32BE(5) & 0x7fffffff,
        payload: this.buffered.subarray(9, 9 + length),
      };
      this.buffered = this.buffered.subarray(9 + length);
      this.frames.push(f);
      if (f.type === FRAME.SETTINGS && (f.flags & ACK) === 0) this.socket.write(frame(FRAME.SETTINGS, ACK, 0));
      if (f.type === FRAME.PING && (f.flags & ACK) === 0) this.socket.write(frame(FRAME.PING, ACK, 0, f.payload));
    }
  }

  /** Opens a gRPC call's stream (headers only, body still to come) and returns its id. */
  open(path: string): number {
    const stream = this.nextStream;
    this.nextStream += 2;
    const block = Buffer.concat([
      literal(":method", "POST"),
      literal(":scheme", "http"),
      literal(":path", path),
      literal(":authority", "127.0.0.1"),
      literal("content-type", "application/grpc"),
      literal("te", "trailers"),
    ]);
    this.socket.write(frame(FRAME.HEADERS, END_HEADERS, stream, block));
    return stream;
  }

  /** Sends one gRPC message (uncompressed) and ends the stream's request side. */
  finish(stream: number, message: Uint8Array): void {
    this.socket.write(frame(FRAME.DATA, END_STREAM, stream, grpcFrame(Buffer.from(message))));
  }

  /** The server's SETTINGS_MAX_CONCURRENT_STREAMS, if it announced one. */
  maxConcurrentStreams(): number | undefined {
    const settings = this.frames.find((f) => f.type === FRAME.SETTINGS && (f.flags & ACK) === 0);
    for (let at = 0; settings && at + 6 <= settings.payload.length; at += 6) {
      if (settings.payload.readUInt16BE(at) === 0x3) return settings.payload.readUInt32BE(at + 2);
    }
    return undefined;
  }

  /** The error code of the server's RST_STREAM on `stream`, if any. */
  reset(stream: number): number | undefined {
    const f = this.frames.find((x) => x.type === FRAME.RST_STREAM && x.stream === stream);
    return f?.payload.readUInt32BE(0);
  }

  /** Whether the server ended `stream` with trailers (a HEADERS frame with END_STREAM). */
  ended(stream: number): boolean {
    return this.frames.some((x) => x.type === FRAME.HEADERS && x.stream === stream && (x.flags & END_STREAM) !== 0);
  }

  async until(check: (f: Frame) => boolean, what: string, timeoutMs = 10_000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(check);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
