/**
 * `npm run fuzz -- --cases 5000`: random and mutated requests against a
 * running service (or one it starts on the tiny model): gRPC frames with
 * flipped bits, cut short, lengths that lie, random bytes; Connect JSON with
 * wrong types and values; wrong content types and paths; raw TCP garbage;
 * HTTP/2 clients that open more streams than the server allows; and, left to
 * run beside the other cases, connections that trickle their headers a byte
 * at a time (slowloris) or sit idle, from another loopback address when the
 * service is local (so they do not count against the cases' own client).
 * Every case must end (a status, an HTTP answer or a closed connection) within
 * its time limit, none as the server's fault (INTERNAL, HTTP 5xx: garbage is
 * the client's), and a good call must give the answer it gave before the
 * first case after every 50 cases. Writes bench/results/fuzz.{md,json}: cases
 * tried, and how each kind ended.
 *   npm run fuzz -- [--cases 5000] [--seed 1] [--address host:port]
 */
import { setMaxListeners } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import { connect } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { AiravataClient } from "../clients/grpc-client.js";
import { GenerateRequestSchema, TokenizeRequestSchema } from "../src/gen/airavata/v1/generation_pb.js";
import { prng } from "../src/util/prng.js";
import { grpcFrame, rawGrpcCall } from "./raw-grpc.js";
import { FRAME, RawH2 } from "./raw-h2.js";

export interface FuzzReport {
  cases: number;
  seed: number;
  /** How long slow and idle connections had, after the last case, to be closed by the server. */
  lingerLimitMs: number;
  /** Count of outcomes by case kind, e.g. { "grpc-mutated": { "grpc INVALID_ARGUMENT": 12 } }. */
  outcomes: Record<string, Record<string, number>>;
  /** Cases that did not end within their time limit. */
  hung: number;
  /** Cases answered as the server's own fault (INTERNAL, HTTP 5xx) rather than refused as the client's. */
  serverFaults: number;
  /** Good calls made between cases, and how many worked. */
  goodCalls: number;
  goodCallsOk: number;
  durationMs: number;
}

const CASE_TIMEOUT_MS = 8000;

/** An outcome that blames the server: gRPC INTERNAL or UNKNOWN, an HTTP 5xx (from any protocol). */
export function isServerFault(outcome: string): boolean {
  return /^grpc (INTERNAL|UNKNOWN)$/.test(outcome) || /^(http|tcp answered) 5\d\d\b/.test(outcome);
}

/** Seeded random choices, so a run can be repeated. */
/** Greedy, so it gives the same text every time on the same model. */
const GOOD_CALL = { prompt: "The", raw: true, temperature: 0, maxNewTokens: 16 };

function randomness(seed: number) {
  const next = prng(seed);
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, pick, bytes };
}
type Rng = ReturnType<typeof randomness>;

const STRANGE_STRINGS = ["", " ", "नमस्ते", "ॐ🙏", "\u0000", "\uFFFD", "a".repeat(5000), "<|user|>\n", "\\u0000", "%00", "../.."];
const STRANGE_NUMBERS = [0, -1, 1e308, -1e308, 2 ** 32, 2 ** 53, 0.5, -0.0001, 1e-300];
/** Sampling values as a binary request carries them: sane ones, and NaN, infinities, negatives. */
const STRANGE_FLOATS = [0, 0.7, 1, 1.5, 3, Number.NaN, Infinity, -Infinity, -1, 1e30, 1e-30];

function validRequest(rng: Rng): { path: string; bytes: Uint8Array } {
  if (rng.next() < 0.5) {
    return {
      path: "/airavata.v1.GenerationService/Tokenize",
      bytes: toBinary(
        TokenizeRequestSchema,
        create(TokenizeRequestSchema, { text: rng.pick(STRANGE_STRINGS), special: rng.next() < 0.5 }),
      ),
    };
  }
  const request = create(GenerateRequestSchema, {
    prompt: rng.pick(STRANGE_STRINGS),
    raw: rng.next() < 0.5,
    maxNewTokens: rng.int(16),
    temperature: rng.pick([0, 0.7, 1.5, 3]),
    topK: rng.int(100),
    ...(rng.next() < 0.3
      ? {
          temperature: rng.pick(STRANGE_FLOATS),
          topP: rng.pick(STRANGE_FLOATS),
          minP: rng.pick(STRANGE_FLOATS),
          repeatPenalty: rng.pick(STRANGE_FLOATS),
        }
      : {}),
    stop: rng.next() < 0.3 ? Array.from({ length: rng.int(40) }, () => rng.pick(STRANGE_STRINGS)) : [],
  });
  if (rng.next() < 0.3)
    request.messages = [
      { $typeName: "airavata.v1.ChatMessage", role: rng.pick(["user", "system", "bot", ""]), content: rng.pick(STRANGE_STRINGS) },
    ];
  return { path: "/airavata.v1.GenerationService/Generate", bytes: toBinary(GenerateRequestSchema, request) };
}

function mutate(rng: Rng, bytes: Uint8Array): Buffer {
  const b = Buffer.from(bytes);
  switch (rng.int(5)) {
    case 0: // flip bits
      for (let i = 0, n = 1 + rng.int(4); i < n && b.length > 0; i++) b[rng.int(b.length)]! ^= 1 << rng.int(8);
      return b;
    case 1: // cut short
      return b.subarray(0, rng.int(b.length + 1));
    case 2: // garbage appended
      return Buffer.concat([b, rng.bytes(1 + rng.int(32))]);
    case 3: // a field tag that does not exist, or a wire type that does not match
      return Buffer.concat([Buffer.from([rng.int(256), rng.int(256)]), b]);
    default: // a length-delimited field that claims more than there is
      return Buffer.concat([Buffer.from([0x0a, 0x80 | rng.int(128), 0x7f]), b]);
  }
}

/** Mostly honest frames; sometimes a compressed flag nobody negotiated, or a length that lies. */
function fuzzedFrame(rng: Rng, payload: Buffer): Buffer {
  const compressed = rng.next() < 0.1;
  const r = rng.next();
  return grpcFrame(payload, {
    compressed,
    declaredLength: r < 0.8 ? payload.length : r < 0.9 ? payload.length + 1 + rng.int(100) : rng.int(2 ** 31),
  });
}

/** One gRPC request over h2c; the outcome is the grpc-status name, or what went wrong at the HTTP/2 level. */
function grpcCall(session: http2.ClientHttp2Session, path: string, body: Buffer, contentType: string): Promise<string> {
  return rawGrpcCall(session, path, body, { contentType, timeout: "5S" }).then(
    ({ http, grpc: code }) => (code !== undefined ? `grpc ${status[Number(code)] ?? code}` : `http ${http}`),
    (e: NodeJS.ErrnoException) => `h2 error ${e.code ?? e.message}`,
  );
}

function connectJson(port: number, rng: Rng): Promise<string> {
  const values = [null, true, "x", "NaN", "Infinity", -1, [], {}, "नमस्ते", "a".repeat(3000), ...STRANGE_NUMBERS];
  const fields = ["text", "special", "prompt", "maxNewTokens", "temperature", "topP", "stop", "messages", "seed", "unknownField"];
  const body: Record<string, unknown> = {};
  for (let i = 0, n = 1 + rng.int(4); i < n; i++) body[rng.pick(fields)] = rng.pick(values);
  let text = JSON.stringify(body);
  if (rng.next() < 0.2) text = text.slice(0, rng.int(text.length)); // broken JSON
  const contentType = rng.pick([
    "application/json",
    "application/json",
    "application/proto",
    "text/plain",
    "application/json; charset=latin1",
  ]);
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/airavata.v1.GenerationService/Tokenize",
        agent: false,
        headers: { "content-type": contentType },
      },
      (res) => {
        let data = "";
        res.on("data", (d) => (data += String(d)));
        res.on("end", () => {
          let code = "";
          try {
            code = (JSON.parse(data) as { code?: string }).code ?? "ok";
          } catch {
            code = "not json";
          }
          resolve(`http ${res.statusCode} ${code}`);
        });
      },
    );
    req.on("error", (e) => resolve(`http error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    req.end(text);
  });
}

function rawTcp(port: number, rng: Rng): Promise<string> {
  const starts = [
    Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), // the HTTP/2 preface, then garbage frames
    Buffer.from("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"),
    Buffer.from("POST /airavata.v1.GenerationService/Tokenize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"),
    Buffer.alloc(0),
  ];
  const payload = Buffer.concat([rng.pick(starts), rng.bytes(rng.int(200))]);
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1", () => socket.end(payload));
    let first = "";
    socket.on("data", (d) => (first ||= String(d).slice(0, 12)));
    socket.on("close", () => resolve(first.startsWith("HTTP/1.1 ") ? `tcp answered ${first.slice(9, 12)}` : "tcp closed"));
    socket.on("error", () => {});
    socket.setTimeout(CASE_TIMEOUT_MS - 500, () => socket.destroy());
  });
}

/** Opens 1–5 streams more than the server announced, all at once, on one connection. */
async function pastStreamLimit(port: number, rng: Rng): Promise<string> {
  const h2 = await RawH2.connect(port);
  try {
    const limit = h2.maxConcurrentStreams() ?? 100;
    for (let i = 0; i < limit + 1 + rng.int(5); i++) h2.open("/airavata.v1.GenerationService/Tokenize");
    await Promise.race([h2.closed, h2.until((f) => f.type === FRAME.GOAWAY, "GOAWAY", CASE_TIMEOUT_MS - 500)]);
    if (h2.frames.some((f) => f.type === FRAME.GOAWAY)) return "h2 GOAWAY";
    return h2.frames.some((f) => f.type === FRAME.RST_STREAM) ? "h2 RST_STREAM, closed" : "h2 closed";
  } catch {
    return "HUNG";
  } finally {
    h2.close();
  }
}

/** How long after the last case a slow or idle connection may stay open before it counts as hung (the default). */
const LINGER_LIMIT_MS = 60_000;

/**
 * A connection that stays open beside the other cases: headers trickled a
 * byte every 300 ms, an HTTP/2 connection that opens no stream, or one that
 * sends nothing at all. Resolves when the server closes it, with how.
 */
async function lingering(port: number, localAddress: string | undefined, rng: Rng, stop: AbortSignal): Promise<string> {
  const style = rng.pick(["slowloris", "idle-h2", "silent"] as const);
  if (style === "idle-h2") {
    let h2: RawH2;
    try {
      h2 = await RawH2.connect(port, localAddress);
    } catch {
      return "idle-h2 closed on arrival";
    }
    const ended = await Promise.race([
      h2.closed.then(() => true),
      new Promise<boolean>((r) => stop.addEventListener("abort", () => r(false), { once: true })),
    ]);
    h2.close();
    if (!ended) return "HUNG";
    return h2.frames.some((f) => f.type === FRAME.GOAWAY) ? "idle-h2 GOAWAY" : "idle-h2 closed";
  }
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1", localAddress });
    let drip: NodeJS.Timeout | undefined;
    let answer = "";
    let opened = false;
    socket.on("connect", () => {
      opened = true;
      if (style !== "slowloris") return;
      socket.write("POST /airavata.v1.GenerationService/Tokenize HTTP/1.1\r\nHost: x\r\n");
      drip = setInterval(() => socket.write("x"), 300);
    });
    socket.on("data", (d) => (answer ||= String(d).slice(0, 12)));
    socket.on("error", () => {});
    const onStop = () => {
      clearInterval(drip);
      socket.destroy();
      resolve("HUNG");
    };
    stop.addEventListener("abort", onStop, { once: true });
    socket.on("close", () => {
      clearInterval(drip);
      stop.removeEventListener("abort", onStop);
      if (!opened) resolve(`${style} refused`);
      else resolve(`${style} closed${answer.startsWith("HTTP/1.1 ") ? ` after ${answer.slice(9, 12)}` : ""}`);
    });
  });
}

async function withTimeout(p: Promise<string>): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<string>((resolve) => (timer = setTimeout(() => resolve("HUNG"), CASE_TIMEOUT_MS)));
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}

export async function runFuzz(
  address: string,
  cases: number,
  seed: number,
  onProgress?: (done: number) => void,
  lingerLimitMs = LINGER_LIMIT_MS,
): Promise<FuzzReport> {
  const rng = randomness(seed);
  const port = Number(address.split(":").at(-1));
  const started = performance.now();
  const outcomes: Record<string, Record<string, number>> = {};
  const count = (kind: string, outcome: string) => {
    const byOutcome = (outcomes[kind] ??= {});
    byOutcome[outcome] = (byOutcome[outcome] ?? 0) + 1;
  };
  const client = new AiravataClient(address);
  let session = http2.connect(`http://${address}`);
  session.on("error", () => {});
  let hung = 0;
  const local = /^(127\.0\.0\.1|localhost):/.test(address);
  const background: Promise<void>[] = [];
  const stopBackground = new AbortController();
  setMaxListeners(0, stopBackground.signal); // one per lingering connection
  let goodCalls = 0;
  let goodCallsOk = 0;
  try {
    // The good call's answer, whatever model serves: taken before the first case.
    const reference = await client.generate(GOOD_CALL);
    if (reference.codeName !== "OK") {
      throw new Error(`the good call failed before any case: ${reference.codeName} ${reference.message ?? ""}`);
    }
    for (let i = 0; i < cases; i++) {
      if (session.closed || session.destroyed) {
        session = http2.connect(`http://${address}`);
        session.on("error", () => {});
      }
      const r = rng.next();
      let kind: string;
      let outcome: Promise<string> | undefined;
      if (r < 0.45) {
        kind = "grpc-mutated";
        const { path, bytes } = validRequest(rng);
        outcome = grpcCall(session, path, fuzzedFrame(rng, mutate(rng, bytes)), "application/grpc");
      } else if (r < 0.55) {
        kind = "grpc-random-bytes";
        outcome = grpcCall(
          session,
          rng.pick(["/airavata.v1.GenerationService/Generate", "/airavata.v1.GenerationService/Tokenize"]),
          rng.bytes(rng.int(300)),
          "application/grpc",
        );
      } else if (r < 0.65) {
        kind = "grpc-valid-strange-values";
        const { path, bytes } = validRequest(rng);
        outcome = grpcCall(session, path, grpcFrame(Buffer.from(bytes)), "application/grpc");
      } else if (r < 0.75) {
        kind = "wrong-path-or-type";
        const path = rng.pick([
          "/",
          "/x",
          "/airavata.v1.GenerationService/Nope",
          "/grpc.health.v1.Health/Watch",
          "/airavata.v1.AdminService/SwapVariant",
          "/../../etc/passwd",
        ]);
        outcome = grpcCall(
          session,
          path,
          fuzzedFrame(rng, rng.bytes(rng.int(20))),
          rng.pick(["application/grpc", "application/grpc+json", "text/html", "application/grpc-web+proto", ""]),
        );
      } else if (r < 0.88) {
        kind = "connect-json";
        outcome = connectJson(port, rng);
      } else if (r < 0.96) {
        kind = "tcp-garbage";
        outcome = rawTcp(port, rng);
      } else if (r < 0.97) {
        kind = "slow-or-idle";
        // Runs beside the next cases; counted when the server has closed it.
        background.push(
          lingering(port, local ? "127.0.0.3" : undefined, rng, stopBackground.signal).then((result) => {
            if (result === "HUNG") hung++;
            count("slow-or-idle", result);
          }),
        );
      } else {
        kind = "h2-past-stream-limit";
        outcome = pastStreamLimit(port, rng);
      }
      if (outcome) {
        const result = await withTimeout(outcome);
        if (result === "HUNG") hung++;
        count(kind, result);
      }
      if ((i + 1) % 50 === 0 || i === cases - 1) {
        goodCalls++;
        const good = await client.generate(GOOD_CALL);
        if (good.codeName === "OK" && good.text === reference.text) goodCallsOk++;
        onProgress?.(i + 1);
      }
    }
    const limit = setTimeout(() => stopBackground.abort(), lingerLimitMs);
    await Promise.all(background);
    clearTimeout(limit);
  } finally {
    stopBackground.abort();
    session.close();
    client.close();
  }
  const serverFaults = Object.values(outcomes)
    .flatMap((byOutcome) => Object.entries(byOutcome))
    .reduce((n, [outcome, count]) => n + (isServerFault(outcome) ? count : 0), 0);
  return {
    cases,
    seed,
    lingerLimitMs,
    outcomes,
    hung,
    serverFaults,
    goodCalls,
    goodCallsOk,
    durationMs: performance.now() - started,
  };
}

export function fuzzMarkdown(report: FuzzReport, where: string): string {
  const rows = Object.entries(report.outcomes).flatMap(([kind, byOutcome]) =>
    Object.entries(byOutcome)
      .sort((a, b) => b[1] - a[1])
      .map(([outcome, n]) => `| ${kind} | ${outcome} | ${n} |${isServerFault(outcome) ? " server's fault" : ""} |`),
  );
  return [
    "# Fuzz run",
    "",
    `- date: ${new Date().toISOString()}`,
    `- service: ${where}`,
    `- cases: ${report.cases} (seed ${report.seed}) in ${(report.durationMs / 1000).toFixed(1)} s`,
    `- hung (no end within ${CASE_TIMEOUT_MS / 1000} s; a slow or idle connection not closed by the server within ${report.lingerLimitMs / 1000} s after the last case): ${report.hung}`,
    `- answered as the server's fault (gRPC INTERNAL or UNKNOWN, HTTP 5xx) instead of refused as the client's: ${report.serverFaults}`,
    `- good calls between cases (the answer given before the first case): ${report.goodCallsOk} of ${report.goodCalls} worked`,
    "",
    "| kind | how it ended | cases | |",
    "|---|---|---:|---|",
    ...rows,
    "",
  ].join("\n");
}
