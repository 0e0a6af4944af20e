/**
 * What one streamed Generate response costs the server process, by the path
 * it takes, with no engine: a server that sends `GenerateResponse` messages
 * (one token's worth each: a short text and one token id) paced one per timer
 * turn, as tokens arrive, to the project's grpc-js client. The paths:
 *   - idle: the timer turns alone, nothing written (the floor of waking up);
 *   - raw: each message encoded with protobuf-es and written as a gRPC frame
 *     straight to Node's HTTP/2 stream;
 *   - connect: a connect-node handler yielding the messages from an async
 *     generator, through Connect's router and streaming pipeline, as the
 *     service's Generate does.
 * The server's CPU per message comes from /proc; each path runs in a fresh
 * server process, warmed first, rounds alternating.
 *   npx tsx bench/message-cost.ts [--messages 3000] [--streams 1,4] [--rounds 3]
 */
import { fork } from "node:child_process";
import http2 from "node:http2";
import os from "node:os";
import { create, toBinary } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { GenerateResponseSchema, GenerationService } from "../src/gen/airavata/v1/generation_pb.js";
import { cpuMs } from "../harness/proc.js";
import { writeReport } from "./report-files.js";
import { median } from "./stream-stats.js";

const PATHS = ["idle", "raw", "connect"] as const;
type Path = (typeof PATHS)[number];
const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 1));
const message = (i: number) => create(GenerateResponseSchema, { text: " शब्द", tokenIds: [1000 + (i % 40_000)] });

/** The server side: `serve <path> <messages per call>`; tells its port over IPC. */
async function serve(path: Path, messages: number): Promise<void> {
  const connect = connectNodeAdapter({
    routes(router) {
      router.service(GenerationService, {
        async *generate() {
          for (let i = 0; i < messages; i++) {
            await tick();
            if (path === "connect") yield message(i);
          }
        },
      });
    },
  });
  const server = path === "raw" ? http2.createServer() : http2.createServer(connect);
  if (path === "raw") {
    server.on("stream", (stream) => {
      stream.on("data", () => {});
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      void (async () => {
        for (let i = 0; i < messages; i++) {
          await tick();
          const body = toBinary(GenerateResponseSchema, message(i));
          const frame = Buffer.allocUnsafe(5 + body.length);
          frame[0] = 0;
          frame.writeUInt32BE(body.length, 1);
          frame.set(body, 5);
          if (stream.destroyed) return;
          stream.write(frame);
        }
        stream.end();
      })();
    });
  }
  server.listen(0, "127.0.0.1", () => process.send?.({ port: (server.address() as { port: number }).port }));
}

if (process.argv[2] === "serve") {
  await serve(process.argv[3] as Path, Number(process.argv[4]));
} else {
  const opts = new Command("message-cost")
    .option("--messages <n>", "messages per call", "3000")
    .option("--streams <list>", "calls at once", "1,4")
    .option("--rounds <n>", "rounds per path", "3")
    .option("--out <dir>", "results folder", "bench/results")
    .parse()
    .opts<{ messages: string; streams: string; rounds: string; out: string }>();
  const messages = Number(opts.messages);
  const levels = opts.streams.split(",").map(Number);
  /** Server CPU µs per message (per timer turn for idle), by path and streams, one value per round. */
  const results = new Map<string, number[]>();
  for (let round = 0; round < Number(opts.rounds); round++) {
    const order = PATHS.map((_, i) => PATHS[(i + round) % PATHS.length]!);
    for (const path of order) {
      for (const streams of levels) {
        const child = fork(new URL(import.meta.url).pathname, ["serve", path, String(messages)], {
          execArgv: ["--import", "tsx"],
        });
        const port = await new Promise<number>((resolve) => child.once("message", (m: { port: number }) => resolve(m.port)));
        const client = new AiravataClient(`127.0.0.1:${port}`);
        const call = async () => {
          let received = 0;
          const outcome = await client.generate({ prompt: "x" }, (r) => (received += r.tokenIds.length));
          if (outcome.codeName !== "OK") throw new Error(`${path}: ${outcome.codeName} ${outcome.message}`);
          return received;
        };
        await Promise.all(Array.from({ length: streams }, call)); // warm: V8 compiles the hot paths
        const before = cpuMs(child.pid!);
        const received = (await Promise.all(Array.from({ length: streams }, call))).reduce((a, b) => a + b, 0);
        const used = cpuMs(child.pid!) - before;
        if (path !== "idle" && received !== messages * streams) throw new Error(`${path}: ${received} messages received`);
        const key = `${path} ${streams}`;
        results.set(key, [...(results.get(key) ?? []), (used * 1000) / (messages * streams)]);
        client.close();
        child.kill();
        process.stderr.write(
          `round ${round + 1}: ${path}, ${streams} streams: ${((used * 1000) / (messages * streams)).toFixed(1)} µs\n`,
        );
      }
    }
  }
  const lines = [
    "# What one streamed Generate response costs the server",
    "",
    `- date: ${new Date().toISOString()}`,
    `- machine: ${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}`,
    `- command: \`npx tsx bench/message-cost.ts --messages ${opts.messages} --streams ${opts.streams} --rounds ${opts.rounds}\``,
    `- ${messages} messages per call, one per 1 ms timer turn, to grpc-js; server CPU (user + kernel) per message from /proc, medians over rounds`,
    "",
    `| streams | idle (timer turns only) µs | raw HTTP/2 write µs | connect-node µs | raw − idle | connect − idle |`,
    "|---:|---:|---:|---:|---:|---:|",
  ];
  for (const streams of levels) {
    const m = (path: Path) => median(results.get(`${path} ${streams}`)!);
    lines.push(
      `| ${streams} | ${m("idle").toFixed(1)} | ${m("raw").toFixed(1)} | ${m("connect").toFixed(1)} | ` +
        `${(m("raw") - m("idle")).toFixed(1)} | ${(m("connect") - m("idle")).toFixed(1)} |`,
    );
  }
  writeReport(opts.out, "message-cost", { results: Object.fromEntries(results) }, `${lines.join("\n")}\n`);
}
