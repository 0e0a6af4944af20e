/**
 * What the fleet's HAProxy adds: the same service called directly and
 * through the balancer in front of it (`npm run fleet -- --replicas 1`),
 * alternating round by round, gRPC streams at each concurrency; TTFT and
 * tokens/s side by side. Writes <out>/balancer.{json,md}.
 *   npx tsx bench/balancer.ts [--model models/synthetic/small.Q4_K_M.gguf] [--concurrency 1,4] [--tokens 128] [--rounds 5]
 */
import { spawn } from "node:child_process";
import os from "node:os";
import { createInterface } from "node:readline";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { freePorts } from "../harness/free-ports.js";
import { writeReport } from "./report-files.js";
import { serviceTrace } from "./server-process.js";
import { type StreamTrace, summarize } from "./stream-stats.js";

const o = new Command("balancer")
  .option("--model <path>", "GGUF model", "models/synthetic/small.Q4_K_M.gguf")
  .option("--concurrency <list>", "concurrent streams", "1,4")
  .option("--tokens <n>", "tokens per stream", "128")
  .option("--rounds <n>", "rounds per path and level", "5")
  .option("--out <dir>", "results folder", "bench/results/balancer")
  .parse()
  .opts<{ model: string; concurrency: string; tokens: string; rounds: string; out: string }>();
const levels = o.concurrency.split(",").map(Number);
const tokens = Number(o.tokens);

const [balancerPort, statsPort, replicaPort] = await freePorts(3);
const fleet = spawn(
  process.execPath,
  [
    "--import",
    "tsx",
    "deploy/fleet.ts",
    "--port",
    String(balancerPort),
    "--stats-port",
    String(statsPort),
    "--replica-ports",
    String(replicaPort),
    "--",
    "--model",
    o.model,
    "--threads",
    "1",
    "--parallel",
    String(Math.max(...levels)),
    "--context-size",
    String(tokens + 64),
    "--prefix-cache",
    "off",
    "--log-level",
    "warn",
  ],
  { stdio: ["ignore", "pipe", "inherit"] },
);
await new Promise<void>((resolve) =>
  createInterface({ input: fleet.stdout! }).on("line", (line) => {
    if ((JSON.parse(line) as { msg: string }).msg === "fleet ready") resolve();
  }),
);
const paths = { direct: `127.0.0.1:${replicaPort}`, balancer: `127.0.0.1:${balancerPort}` } as const;
type Path = keyof typeof paths;
const clients = { direct: new AiravataClient(paths.direct), balancer: new AiravataClient(paths.balancer) };
const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;
const collected = new Map<string, StreamTrace[][]>();
// Warm both paths (connections open, the engine has decoded once).
for (const c of Object.values(clients)) await c.generate({ prompt: "नमस्ते", raw: true, maxNewTokens: 1 });
for (let round = 0; round < Number(o.rounds); round++) {
  const order: Path[] = round % 2 === 0 ? ["direct", "balancer"] : ["balancer", "direct"];
  for (const path of order) {
    for (const c of levels) {
      const traces = await Promise.all(Array.from({ length: c }, (_, i) => serviceTrace(clients[path], prompt(i), tokens)));
      const key = `${path} ${c}`;
      collected.set(key, [...(collected.get(key) ?? []), traces]);
    }
  }
  process.stderr.write(`round ${round + 1} done\n`);
}
for (const c of Object.values(clients)) c.close();
const stopped = new Promise((r) => fleet.once("exit", r));
fleet.kill("SIGTERM");
await stopped;

const f = (n: number) => n.toFixed(1);
const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}`;
const rows = levels.map((c) => {
  const d = summarize(collected.get(`direct ${c}`)!);
  const b = summarize(collected.get(`balancer ${c}`)!);
  return { concurrency: c, direct: d, balancer: b };
});
const md = [
  "# The fleet's balancer: direct against through HAProxy",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- model: ${o.model}; ${tokens} greedy tokens per stream; one replica, 1 thread; HAProxy as deploy/haproxy.ts writes it, gRPC over h2c both ways`,
  `- command: \`npx tsx bench/balancer.ts --model ${o.model} --concurrency ${o.concurrency} --tokens ${o.tokens} --rounds ${o.rounds}\``,
  "",
  "| streams | TTFT p50 direct / balancer ms | added TTFT p50 ms | ITL p50 direct / balancer ms | tok/s aggregate direct / balancer | balancer ÷ direct tok/s |",
  "|---:|---:|---:|---:|---:|---:|",
  ...rows.map(
    ({ concurrency, direct: d, balancer: b }) =>
      `| ${concurrency} | ${f(d.ttftMs.p50)} / ${f(b.ttftMs.p50)} | ${f(b.ttftMs.p50 - d.ttftMs.p50)} | ${f(d.interTokenMs.p50)} / ${f(b.interTokenMs.p50)} | ` +
      `${f(d.aggregateTokensPerSecond)} / ${f(b.aggregateTokensPerSecond)} | ${(b.aggregateTokensPerSecond / d.aggregateTokensPerSecond).toFixed(2)} |`,
  ),
  "",
].join("\n");
writeReport(o.out, "balancer", { machine, rows }, md);
