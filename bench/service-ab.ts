/**
 * The service against itself at another commit, side by side in one run: a
 * change's gain (or loss) measured on the same machine in the same minutes,
 * rounds alternating which one goes first. Besides tokens/s and TTFT, each
 * side's cost per token received: the server process's CPU (user and kernel),
 * the engine process's CPU, the engine → server hop and the bench client's CPU.
 *   npx tsx bench/service-ab.ts --baseline <git ref> [--args "<flags>"] [--baseline-args "<flags>"] [--warm <tokens>]
 *     [--model …] [--threads 1,2] [--concurrency 1,4,8] [--tokens 128] [--rounds 3] [--out bench/results/ab]
 * With `--baseline HEAD` and `--args`, it compares a setting with the default on the same code.
 * The baseline runs from a git worktree of the ref (under the system's temp
 * folder), with this checkout's node_modules.
 */
import { execFileSync } from "node:child_process";
import { existsSync, symlinkSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { cpuSplitMs, enginePids, threadCpuMs } from "../harness/proc.js";
import { writeReport } from "./report-files.js";
import { hopSeconds, serviceTrace, startBenchServer } from "./server-process.js";
import { median, type StreamTrace, summarize, warmUp } from "./stream-stats.js";

const opts = new Command("service-ab")
  .requiredOption("--baseline <ref>", "the commit to compare with (any git ref)")
  .option("--args <flags>", "service flags for this checkout's side only (e.g. a setting under test)", "")
  .option("--baseline-args <flags>", "service flags for the baseline's side only", "")
  .option("--model <path>", "GGUF model", "models/synthetic/small.Q4_K_M.gguf")
  .option("--threads <list>", "decode thread counts", "1,2")
  .option("--concurrency <list>", "concurrent streams", "1,4,8")
  .option("--tokens <n>", "tokens per stream", "128")
  .option("--rounds <n>", "rounds per side, thread count and level", "3")
  .option(
    "--warm <tokens>",
    "tokens to stream through each fresh server before measuring (V8 compiles the hot paths over the first few thousand)",
    "0",
  )
  .option("--out <dir>", "results folder", "bench/results/ab")
  .parse()
  .opts<{
    baseline: string;
    args: string;
    baselineArgs: string;
    model: string;
    threads: string;
    concurrency: string;
    tokens: string;
    rounds: string;
    warm: string;
    out: string;
  }>();

const model = resolve(opts.model);
if (!existsSync(model)) {
  console.error(`no model at ${opts.model}: run \`npm run models\` first (see bench/README.md)`);
  process.exit(1);
}
const commit = (ref: string) => execFileSync("git", ["rev-parse", "--short=12", ref]).toString().trim();
const baseline = commit(opts.baseline);
const current = `${commit("HEAD")}${execFileSync("git", ["status", "--porcelain", "--untracked-files=no"]).length > 0 ? "+changes" : ""}`;
const worktree = join(os.tmpdir(), `airavata-serve-baseline-${baseline}`);
if (!existsSync(worktree)) {
  execFileSync("git", ["worktree", "add", "--detach", worktree, baseline], { stdio: "ignore" });
  symlinkSync(resolve("node_modules"), join(worktree, "node_modules"));
}
const flags = (list: string) => list.split(/\s+/).filter(Boolean);
const withFlags = (name: string, list: string) => (list.trim() === "" ? name : `${name} ${list.trim()}`);
const SIDES = [
  { name: withFlags(`this checkout (${current})`, opts.args), cwd: undefined, flags: flags(opts.args) },
  { name: withFlags(`baseline (${baseline})`, opts.baselineArgs), cwd: worktree, flags: flags(opts.baselineArgs) },
] as const;
const levels = opts.concurrency.split(",").map(Number);
const threadCounts = opts.threads.split(",").map(Number);
const slots = Math.max(...levels);
const contextSize = Number(opts.tokens) + 64;
const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;

/** Per token received, µs; the hop is the mean per chunk. */
interface Cost {
  serverUser: number;
  serverSystem: number;
  /** The server's main (JavaScript) thread; the rest of its CPU is V8's and libuv's helper threads. */
  serverMain: number;
  engine: number;
  hop: number;
  client: number;
}

/** One side at one thread count: every level once, its traces and what each token cost. */
async function round(side: (typeof SIDES)[number], threads: number): Promise<{ traces: Map<number, StreamTrace[]>; cost: Cost }> {
  const args = ["--model", model, "--gpu", "cpu", "--threads", String(threads), "--parallel", String(slots), ...side.flags];
  const server = await startBenchServer([...args, "--context-size", String(contextSize)], {}, side.cwd);
  const client = new AiravataClient(`127.0.0.1:${server.port}`);
  await client.generate({ prompt: "नमस्ते", raw: true, maxNewTokens: 1 });
  await warmUp(Number(opts.warm), slots, (i) => serviceTrace(client, prompt(i), Number(opts.tokens)));
  const [engine] = enginePids(server.child.pid!);
  const serverBefore = cpuSplitMs(server.child.pid!);
  const mainBefore = threadCpuMs(server.child.pid!).get(server.child.pid!)!;
  const engineBefore = cpuSplitMs(engine!);
  const hopBefore = await hopSeconds(server.port);
  const clientBefore = process.cpuUsage();
  const traces = new Map<number, StreamTrace[]>();
  for (const c of levels) {
    const streams = await Promise.all(Array.from({ length: c }, (_, i) => serviceTrace(client, prompt(i), Number(opts.tokens))));
    traces.set(c, streams);
  }
  const clientUsed = process.cpuUsage(clientBefore);
  const serverAfter = cpuSplitMs(server.child.pid!);
  const mainAfter = threadCpuMs(server.child.pid!).get(server.child.pid!)!;
  const engineAfter = cpuSplitMs(engine!);
  const hopAfter = await hopSeconds(server.port);
  client.close();
  await server.stop();
  const tokens = [...traces.values()].flat().reduce((n, t) => n + t.tokenTimes.length, 0);
  const perToken = (ms: number) => (ms * 1000) / tokens;
  return {
    traces,
    cost: {
      serverUser: perToken(serverAfter.user - serverBefore.user),
      serverSystem: perToken(serverAfter.system - serverBefore.system),
      serverMain: perToken(mainAfter - mainBefore),
      engine: perToken(engineAfter.user + engineAfter.system - engineBefore.user - engineBefore.system),
      hop: ((hopAfter.sum - hopBefore.sum) / (hopAfter.count - hopBefore.count)) * 1e6,
      client: (clientUsed.user + clientUsed.system) / tokens,
    },
  };
}

/** By side and thread count: each round's traces per level, and each round's costs. */
interface Run {
  traces: Map<number, StreamTrace[][]>;
  costs: Cost[];
}
const runs = new Map<string, Run>();
for (let r = 0; r < Number(opts.rounds); r++) {
  for (const threads of threadCounts) {
    const order = r % 2 === 0 ? SIDES : [...SIDES].reverse();
    for (const side of order) {
      const { traces, cost } = await round(side, threads);
      const key = `${side.name} ${threads}`;
      const run: Run = runs.get(key) ?? { traces: new Map(), costs: [] };
      for (const [c, t] of traces) run.traces.set(c, [...(run.traces.get(c) ?? []), t]);
      run.costs.push(cost);
      runs.set(key, run);
      process.stderr.write(`round ${r + 1}: ${side.name}, ${threads} threads done\n`);
    }
  }
}

const [mine, theirs] = SIDES.map((s) => s.name);
const f1 = (n: number) => n.toFixed(1);
const lines = [
  "# The service against a baseline commit",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
  `- model: ${opts.model}; ${opts.tokens} greedy tokens per stream; ${slots} slots; ${opts.rounds} rounds per side, alternating which goes first; ` +
    `${Number(opts.warm) > 0 ? `each server warmed with ${opts.warm} tokens first` : "each server measured from its start (V8 still compiling)"}`,
  `- command: \`npx tsx bench/service-ab.ts --baseline ${opts.baseline} --model ${opts.model} --threads ${opts.threads} --concurrency ${opts.concurrency} --tokens ${opts.tokens} --rounds ${opts.rounds} --warm ${opts.warm}` +
    `${opts.args ? ` --args "${opts.args}"` : ""}${opts.baselineArgs ? ` --baseline-args "${opts.baselineArgs}"` : ""}\``,
  `- A: ${mine}; B: ${theirs}`,
  "",
  "| threads | streams | A tok/s | B tok/s | A ÷ B | A TTFT p50 ms | B TTFT p50 ms |",
  "|---:|---:|---:|---:|---:|---:|---:|",
];
for (const threads of threadCounts) {
  for (const c of levels) {
    const a = summarize(runs.get(`${mine} ${threads}`)!.traces.get(c)!);
    const b = summarize(runs.get(`${theirs} ${threads}`)!.traces.get(c)!);
    lines.push(
      `| ${threads} | ${c} | ${f1(a.aggregateTokensPerSecond)} | ${f1(b.aggregateTokensPerSecond)} | ` +
        `${(a.aggregateTokensPerSecond / b.aggregateTokensPerSecond).toFixed(3)} | ${f1(a.ttftMs.p50)} | ${f1(b.ttftMs.p50)} |`,
    );
  }
}
lines.push(
  "",
  `Per token received, over all levels of a round (µs, medians over rounds; the hop is the mean per chunk, from \`airavata_engine_hop_seconds\`):`,
  "",
  "| side | threads | server CPU user | server CPU kernel | server CPU | of which its main thread | engine CPU | hop | bench client CPU |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
);
for (const threads of threadCounts) {
  for (const [label, name] of [
    ["A", mine],
    ["B", theirs],
  ] as const) {
    const costs = runs.get(`${name} ${threads}`)!.costs;
    const m = (pick: (c: Cost) => number) => f1(median(costs.map(pick)));
    lines.push(
      `| ${label} | ${threads} | ${m((c) => c.serverUser)} | ${m((c) => c.serverSystem)} | ${m((c) => c.serverUser + c.serverSystem)} | ${m((c) => c.serverMain)} | ` +
        `${m((c) => c.engine)} | ${m((c) => c.hop)} | ${m((c) => c.client)} |`,
    );
  }
}
const json = Object.fromEntries(
  [...runs].map(([key, run]) => [key, { costs: run.costs, traces: Object.fromEntries(run.traces) }]),
);
writeReport(opts.out, "service-ab", { command: process.argv.slice(2), runs: json }, `${lines.join("\n")}\n`);
