/**
 * What one call costs outside the engine's decode, from the client's side,
 * against the floor of Node's HTTP/2 on the same machine:
 * - floor: a bare `node:http2` server in a process of its own answering one
 *   gRPC-shaped message and trailers (no Connect, no service);
 * - health: the service's `grpc.health.v1.Health/Check` (its whole HTTP/2 and
 *   Connect stack, no engine);
 * - generate: a one-token `Generate` (raw prompt "The"), with the server's own
 *   TTFT and the engine's prefill from its trailers.
 * Every call on one warm HTTP/2 session per server, sent by hand (no client
 * library's cost in it), kinds alternating call by call. Time to the first
 * DATA frame, p50 over `--calls` of each.
 *
 *   npx tsx bench/call-path.ts [--model models/synthetic/small.Q4_K_M.gguf] [--calls 60] [--out bench/results/call-path]
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import os from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create, toBinary } from "@bufbuild/protobuf";
import { Command } from "commander";
import { grpcFrame, rawGrpcCall } from "../harness/raw-grpc.js";
import { GenerateRequestSchema } from "../src/gen/airavata/v1/generation_pb.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("call-path")
  .option("--model <path>", "GGUF file", "models/synthetic/small.Q4_K_M.gguf")
  .option("--calls <n>", "calls of each kind", "60")
  .option("--out <dir>", "result folder", "bench/results/call-path")
  .parse()
  .opts<{ model: string; calls: string; out: string }>();

/** The floor: Node's HTTP/2 answering a gRPC-shaped call, nothing else. */
const FLOOR = `
const http2 = require("node:http2");
const server = http2.createServer();
server.on("stream", (stream) => {
  stream.on("data", () => {});
  stream.on("end", () => {
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(Buffer.from([0, 0, 0, 0, 2, 8, 1]));
  });
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
`;
const floor = spawn(process.execPath, ["-e", FLOOR], { stdio: ["ignore", "pipe", "inherit"] });
process.once("exit", () => floor.kill());
const floorPort = await new Promise<number>((resolve) =>
  createInterface({ input: floor.stdout! }).once("line", (l) => resolve(Number(l))),
);
const service = await startBenchServer(["--model", opts.model, "--threads", "1", "--parallel", "1", "--context-size", "2048"]);

const sessions = {
  floor: http2.connect(`http://127.0.0.1:${floorPort}`),
  service: http2.connect(`http://127.0.0.1:${service.port}`),
};
const generateBody = grpcFrame(
  Buffer.from(
    toBinary(GenerateRequestSchema, create(GenerateRequestSchema, { prompt: "The", raw: true, maxNewTokens: 1, temperature: 0 })),
  ),
);
const kinds = {
  floor: { session: sessions.floor, path: "/bench.Floor/Call", body: grpcFrame(Buffer.alloc(0)) },
  health: { session: sessions.service, path: "/grpc.health.v1.Health/Check", body: grpcFrame(Buffer.alloc(0)) },
  generate: { session: sessions.service, path: "/airavata.v1.GenerationService/Generate", body: generateBody },
};
type Kind = keyof typeof kinds;

/** One call: ms to its first DATA frame, and its trailers. */
async function call(kind: Kind): Promise<{ firstMs: number; trailers: http2.IncomingHttpHeaders }> {
  const { session, path, body } = kinds[kind];
  const result = await rawGrpcCall(session, path, body);
  return { firstMs: result.firstDataMs ?? NaN, trailers: result.trailers };
}

const samples: Record<Kind, number[]> = { floor: [], health: [], generate: [] };
const serverTtft: number[] = [];
const prefill: number[] = [];
try {
  for (let i = 0; i < 20; i++) for (const kind of Object.keys(kinds) as Kind[]) await call(kind);
  for (let i = 0; i < Number(opts.calls); i++) {
    for (const kind of Object.keys(kinds) as Kind[]) {
      const { firstMs, trailers } = await call(kind);
      if (kind === "generate") {
        if (trailers["grpc-status"] !== "0") throw new Error(`Generate ended ${String(trailers["grpc-status"])}`);
        serverTtft.push(Number(trailers["airavata-ttft-ms"]));
        prefill.push(Number(trailers["airavata-prefill-ms"]));
      }
      samples[kind].push(firstMs);
      // Apart, as separate clients' calls would be.
      await new Promise((r) => setTimeout(r, 5));
    }
  }
} finally {
  sessions.floor.close();
  sessions.service.close();
  floor.kill();
  await service.stop();
}

const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const result = {
  date: new Date().toISOString(),
  machine: `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}`,
  model: opts.model,
  calls: Number(opts.calls),
  p50Ms: {
    floor: p50(samples.floor),
    health: p50(samples.health),
    generate: p50(samples.generate),
    generateServerTtft: p50(serverTtft),
    generatePrefill: p50(prefill),
  },
  samples,
};
const m = result.p50Ms;
const f = (n: number) => n.toFixed(2);
const md = [
  "# One call's path outside the decode",
  "",
  `- date: ${result.date}; machine: ${result.machine}`,
  `- model: ${opts.model}, 1 thread, 1 slot; ${opts.calls} calls of each kind, alternating, on one warm HTTP/2 session per server, sent by hand`,
  `- command: \`npx tsx bench/call-path.ts --model ${opts.model} --calls ${opts.calls}\``,
  "",
  "| call | to the first DATA frame, p50 ms |",
  "|---|--:|",
  `| floor: bare node:http2, one message and trailers | ${f(m.floor)} |`,
  `| the service's Health/Check (HTTP/2 + Connect, no engine) | ${f(m.health)} |`,
  `| the service's Generate, one token | ${f(m.generate)} |`,
  `| — of it, the server's TTFT (trailer: handler to the first chunk back from the engine) | ${f(m.generateServerTtft)} |`,
  `| — of that, the engine's prefill (trailer) | ${f(m.generatePrefill)} |`,
  "",
  `So a call's way in and out through the service's HTTP/2 and Connect costs ${f(m.health - m.floor)} ms over the floor (Health/Check − floor); ` +
    `a Generate spends ${f(m.generate - m.generateServerTtft)} ms outside the server's TTFT (in before the handler, out after the first chunk) ` +
    `and ${f(m.generateServerTtft - m.generatePrefill)} ms inside it outside the prefill (admission, the hop to the engine and back, tokenizing).`,
  "",
].join("\n");
mkdirSync(opts.out, { recursive: true });
writeFileSync(join(opts.out, "call-path.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(join(opts.out, "call-path.md"), md);
console.log(md);
