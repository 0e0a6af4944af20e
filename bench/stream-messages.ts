/**
 * How many streamed messages carry a generation's tokens under each
 * `--stream-interval`: what a setting saves depends on how fast each stream's
 * tokens come, which falls as more streams share the decode.
 *   npx tsx bench/stream-messages.ts [--intervals 1,4,20ms,50ms] [--threads 1,2] [--concurrency 1,4,8]
 *     [--model …] [--tokens 128] [--out bench/results/stream-messages]
 */
import os from "node:os";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { writeReport } from "./report-files.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("stream-messages")
  .option("--intervals <list>", "--stream-interval values", "1,4,20ms,50ms")
  .option("--model <path>", "GGUF model", "models/synthetic/small.Q4_K_M.gguf")
  .option("--threads <list>", "decode thread counts", "1,2")
  .option("--concurrency <list>", "concurrent streams", "1,4,8")
  .option("--tokens <n>", "tokens per stream", "128")
  .option("--out <dir>", "results folder", "bench/results/stream-messages")
  .parse()
  .opts<{ intervals: string; model: string; threads: string; concurrency: string; tokens: string; out: string }>();
const list = (s: string) => s.split(",").map((x) => x.trim());
const levels = list(opts.concurrency).map(Number);
const slots = Math.max(...levels);

const rows: { interval: string; threads: number; streams: number; tokens: number; messages: number; seconds: number }[] = [];
for (const interval of list(opts.intervals)) {
  for (const threads of list(opts.threads).map(Number)) {
    const args = ["--model", opts.model, "--gpu", "cpu", "--threads", String(threads), "--parallel", String(slots)];
    const server = await startBenchServer([...args, "--stream-interval", interval]);
    const client = new AiravataClient(`127.0.0.1:${server.port}`);
    for (const streams of levels) {
      const started = performance.now();
      const outcomes = await Promise.all(
        Array.from({ length: streams }, (_, i) =>
          client.generate({ prompt: `नमस्ते ${i}`, maxNewTokens: Number(opts.tokens), temperature: 0, repeatPenalty: 1 }),
        ),
      );
      const seconds = (performance.now() - started) / 1000;
      const tokens = outcomes.reduce((n, o) => n + o.responses.reduce((k, r) => k + r.tokenIds.length, 0), 0);
      const messages = outcomes.reduce((n, o) => n + o.responses.length, 0);
      rows.push({ interval, threads, streams, tokens, messages, seconds });
    }
    client.close();
    await server.stop();
  }
}

const markdown = [
  "# Streamed messages per generation, by `--stream-interval`",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${os.cpus()[0]?.model.trim()}, ${os.availableParallelism()} cores, Node ${process.version}`,
  `- model: ${opts.model}; ${opts.tokens} greedy tokens per stream; ${slots} slots; one run each`,
  `- command: \`npx tsx bench/stream-messages.ts --intervals ${opts.intervals} --threads ${opts.threads} --concurrency ${opts.concurrency} --tokens ${opts.tokens}\``,
  "",
  "| interval | threads | streams | tokens | messages | tokens per message | aggregate tok/s |",
  "|---|---:|---:|---:|---:|---:|---:|",
  ...rows.map(
    (r) =>
      `| ${r.interval} | ${r.threads} | ${r.streams} | ${r.tokens} | ${r.messages} | ${(r.tokens / r.messages).toFixed(2)} | ${(r.tokens / r.seconds).toFixed(1)} |`,
  ),
  "",
].join("\n");
writeReport(opts.out, "stream-messages", { rows }, markdown);
