/**
 * One stream at a time, the service and llama-server called in turn: both
 * are started once, warmed, and kept up, and each pair of calls (which goes
 * first alternates) runs the same greedy stream on each. On these shared
 * 2-core machines the speed drifts ±20% from minute to minute, more than the
 * gap one stream can show, and a bench round of fresh servers per target
 * takes a minute; pairs a second apart see the same machine, and their
 * ratios show the spread.
 *
 *   npx tsx bench/alternate.ts [--model models/synthetic/small.Q4_K_M.gguf] [--threads 1,2]
 *     [--tokens 128] [--pairs 20] [--warm 1024] [--pause 250] [--flash-attention auto] [--thread-pool persistent]
 *     [--out bench/results/alternate]
 */
import os from "node:os";
import { Command, Option } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { FLASH_ATTENTION, type FlashAttention, THREAD_POOL, type ThreadPool } from "../src/generation.js";
import { llamaServerBinary, llamaServerTrace, startLlamaServer } from "./llama-server.js";
import { writeReport } from "./report-files.js";
import { serviceTrace, startBenchServer } from "./server-process.js";
import { median, type StreamTrace, warmUp } from "./stream-stats.js";

const opts = new Command("alternate")
  .option("--model <path>", "GGUF file", "models/synthetic/small.Q4_K_M.gguf")
  .option("--threads <list>", "decode thread counts, a run each", "1,2")
  .option("--tokens <n>", "greedy tokens a call", "128")
  .option("--pairs <n>", "pairs of calls per thread count", "20")
  .option("--warm <tokens>", "tokens streamed through each server before it is measured", "1024")
  .option(
    "--pause <ms>",
    "idle time before each call: a ggml thread pool (llama-server's, and the service's with --thread-pool persistent) spins ~150 ms after its last decode, on a core the other server's call would share",
    "250",
  )
  .addOption(
    new Option("--flash-attention <setting>", "llama.cpp's flash attention, for both").choices(FLASH_ATTENTION).default("auto"),
  )
  .addOption(new Option("--thread-pool <setting>", "the service's --thread-pool").choices(THREAD_POOL).default("persistent"))
  .option("--out <dir>", "result folder", "bench/results/alternate")
  .parse()
  .opts<{
    model: string;
    threads: string;
    tokens: string;
    pairs: string;
    warm: string;
    pause: string;
    flashAttention: FlashAttention;
    threadPool: ThreadPool;
    out: string;
  }>();

const tokens = Number(opts.tokens);
const { flashAttention, threadPool } = opts;
const binary = await llamaServerBinary((line) => process.stderr.write(`${line}\n`));
if (binary === undefined) process.exit(1);
const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;

/** Time per output token after the first, and to the first. */
function timing(trace: StreamTrace): { tpotMs: number; ttftMs: number } {
  const t = trace.tokenTimes;
  return { tpotMs: (t.at(-1)! - t[0]!) / (t.length - 1), ttftMs: t[0]! - trace.sentAt };
}

interface Run {
  threads: number;
  service: { tpotMs: number; ttftMs: number }[];
  llamaServer: { tpotMs: number; ttftMs: number }[];
  cpuVariant: string | undefined;
}
const runs: Run[] = [];
for (const threads of opts.threads.split(",").map(Number)) {
  const service = await startBenchServer([
    ...["--model", opts.model, "--gpu", "cpu", "--threads", String(threads), "--parallel", "1"],
    ...["--context-size", String(tokens + 64), "--prefix-cache", "off", "--flash-attention", flashAttention],
    ...["--thread-pool", threadPool],
  ]);
  const client = new AiravataClient(`127.0.0.1:${service.port}`);
  const peer = await startLlamaServer(binary, { model: opts.model, threads, slots: 1, contextSize: tokens + 64, flashAttention });
  try {
    const onService = (i: number) => serviceTrace(client, prompt(i), tokens);
    const onPeer = (i: number) => llamaServerTrace(peer.port, prompt(i), tokens);
    await warmUp(Number(opts.warm), 1, onService);
    await warmUp(Number(opts.warm), 1, onPeer);
    const run: Run = { threads, service: [], llamaServer: [], cpuVariant: peer.cpuVariant };
    for (let pair = 0; pair < Number(opts.pairs); pair++) {
      const order = pair % 2 === 0 ? (["service", "llamaServer"] as const) : (["llamaServer", "service"] as const);
      for (const target of order) {
        await new Promise((resolve) => setTimeout(resolve, Number(opts.pause)));
        run[target].push(timing(await (target === "service" ? onService : onPeer)(pair)));
      }
    }
    runs.push(run);
    process.stderr.write(`${threads} thread(s): ${opts.pairs} pairs done\n`);
  } finally {
    client.close();
    await service.stop();
    await peer.stop();
  }
}

const f = (n: number, d = 2) => n.toFixed(d);
const lines = [
  "# One stream, the service and llama-server called in turn",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}; llama-server loaded ${[...new Set(runs.map((r) => `\`libggml-cpu-${r.cpuVariant ?? "?"}\``))].join(", ")}`,
  `- model: ${opts.model}; ${tokens} greedy tokens a call; 1 slot each; flash attention ${flashAttention}; the service's thread pool ${threadPool}; each server warmed with ${opts.warm} tokens, both kept up`,
  `- command: \`npx tsx bench/alternate.ts --model ${opts.model} --threads ${opts.threads} --tokens ${tokens} --pairs ${opts.pairs} --warm ${opts.warm} --pause ${opts.pause} --flash-attention ${flashAttention} --thread-pool ${threadPool}\``,
  `- a pair: the same stream on each, one after the other (the first alternates), each call after ${opts.pause} ms idle; tok/s = 1000 / TPOT (after the first token)`,
  "",
  "| threads | pairs | service TPOT p50 ms | llama-server TPOT p50 ms | service ÷ llama-server tok/s: p50 of the pairs (p25–p75) | pairs the service was faster | service TTFT p50 ms | llama-server TTFT p50 ms |",
  "|---:|---:|---:|---:|---:|---:|---:|---:|",
];
for (const run of runs) {
  const ratios = run.service.map((s, i) => run.llamaServer[i]!.tpotMs / s.tpotMs);
  const sorted = [...ratios].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
  lines.push(
    `| ${run.threads} | ${ratios.length} | ${f(median(run.service.map((s) => s.tpotMs)))} | ${f(median(run.llamaServer.map((s) => s.tpotMs)))} | ` +
      `${f(median(ratios))} (${f(q(0.25))}–${f(q(0.75))}) | ${ratios.filter((r) => r > 1).length} | ` +
      `${f(median(run.service.map((s) => s.ttftMs)), 1)} | ${f(median(run.llamaServer.map((s) => s.ttftMs)), 1)} |`,
  );
}
writeReport(opts.out, "alternate", { options: opts, runs }, `${lines.join("\n")}\n`);
