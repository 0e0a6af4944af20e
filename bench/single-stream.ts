/**
 * One stream's speed: the service (Generate over gRPC, engine in its own
 * process) against node-llama-cpp in-process with the same settings, for
 * several thread counts, interleaved in one run so machine drift hits both.
 *   tsx bench/single-stream.ts [--model models/synthetic/small.q4_0.gguf] [--threads 1,2,3,4] [--rounds 3] [--tokens 128]
 * Writes bench/results/single-stream.{json,md}.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { promisify } from "node:util";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { startBenchServer } from "./server-process.js";

const exec = promisify(execFile);
const opts = new Command("single-stream")
  .option("--model <path>", "GGUF model", "models/synthetic/small.q4_0.gguf")
  .option("--threads <list>", "thread counts to compare", "1,2,3,4")
  .option("--rounds <n>", "alternating rounds per setting", "3")
  .option("--runs <n>", "generations per round", "3")
  .option("--tokens <n>", "tokens per generation", "128")
  .parse()
  .opts<{ model: string; threads: string; rounds: string; runs: string; tokens: string }>();

const SEQUENCES = 4;
const CONTEXT = 2048;
if (!existsSync(opts.model)) {
  console.error(`no model at ${opts.model}: run \`npm run models -- --shape small --types q4_0\` first`);
  process.exit(1);
}

interface Run {
  ttftMs: number;
  decodeTokensPerSecond: number;
}

async function inProcess(threads: number): Promise<Run[]> {
  const { stdout } = await exec(
    process.execPath,
    [
      "--import",
      "tsx",
      "bench/in-process.ts",
      opts.model,
      String(threads),
      opts.runs,
      opts.tokens,
      String(SEQUENCES),
      String(CONTEXT),
    ],
    { env: { ...process.env, UV_THREADPOOL_SIZE: "1" } },
  );
  return stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Run);
}

async function service(threads: number): Promise<Run[]> {
  const server = await startBenchServer([
    "--model",
    opts.model,
    "--threads",
    String(threads),
    "--parallel",
    String(SEQUENCES),
    "--context-size",
    String(CONTEXT),
    "--gpu",
    "cpu",
  ]);
  const port = server.port;
  const client = new AiravataClient(`127.0.0.1:${port}`);
  const runs: Run[] = [];
  for (let i = 0; i < Number(opts.runs); i++) {
    const outcome = await client.generate({
      prompt: "भारत की राजधानी क्या है?",
      maxNewTokens: Number(opts.tokens),
      temperature: 0,
      repeatPenalty: 1,
    });
    if (outcome.codeName !== "OK" || !outcome.metrics) throw new Error(`${outcome.codeName}: ${outcome.message}`);
    runs.push({ ttftMs: outcome.metrics.timeToFirstTokenMs, decodeTokensPerSecond: outcome.metrics.decodeTokensPerSecond });
  }
  client.close();
  await server.stop();
  return runs;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const threadCounts = opts.threads.split(",").map(Number);
const results: Record<string, { service: Run[]; inProcess: Run[] }> = {};
for (let round = 0; round < Number(opts.rounds); round++) {
  for (const threads of threadCounts) {
    const entry = (results[threads] ??= { service: [], inProcess: [] });
    // Alternate which goes first, so neither always runs on a warmer machine.
    const order = round % 2 === 0 ? (["inProcess", "service"] as const) : (["service", "inProcess"] as const);
    for (const which of order) {
      const runs = which === "service" ? await service(threads) : await inProcess(threads);
      // The first generation of each process warms up; keep the rest.
      entry[which].push(...runs.slice(1));
      process.stderr.write(
        `round ${round + 1} threads ${threads} ${which}: ${runs.map((r) => r.decodeTokensPerSecond.toFixed(0)).join(" ")} tok/s\n`,
      );
    }
  }
}

const rows = threadCounts.map((threads) => {
  const r = results[threads]!;
  const svc = median(r.service.map((x) => x.decodeTokensPerSecond));
  const inp = median(r.inProcess.map((x) => x.decodeTokensPerSecond));
  return {
    threads,
    serviceDecodeTokensPerSecond: svc,
    inProcessDecodeTokensPerSecond: inp,
    ratio: svc / inp,
    serviceTtftMs: median(r.service.map((x) => x.ttftMs)),
    inProcessTtftMs: median(r.inProcess.map((x) => x.ttftMs)),
    samples: r.service.length,
  };
});
const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores available, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
const command = `tsx bench/single-stream.ts --model ${opts.model} --threads ${opts.threads} --rounds ${opts.rounds} --runs ${opts.runs} --tokens ${opts.tokens}`;
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/single-stream.json",
  JSON.stringify(
    {
      date: new Date().toISOString(),
      machine,
      command,
      model: opts.model,
      sequences: SEQUENCES,
      contextSize: CONTEXT,
      rows,
      results,
    },
    null,
    2,
  ) + "\n",
);
const md = [
  `# One stream: service vs node-llama-cpp in-process`,
  ``,
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- model: ${opts.model} (synthetic, see src/synthetic)`,
  `- settings: ${SEQUENCES} sequences, ${CONTEXT} tokens each, greedy, ${opts.tokens} new tokens, chat prompt`,
  `- command: \`${command}\``,
  `- medians over ${rows[0]?.samples} generations per cell (first generation of each process dropped as warm-up)`,
  ``,
  `| threads | service decode tok/s | in-process decode tok/s | service / in-process | service TTFT ms | in-process TTFT ms |`,
  `|---:|---:|---:|---:|---:|---:|`,
  ...rows.map(
    (r) =>
      `| ${r.threads} | ${r.serviceDecodeTokensPerSecond.toFixed(1)} | ${r.inProcessDecodeTokensPerSecond.toFixed(1)} | ${r.ratio.toFixed(3)} | ${r.serviceTtftMs.toFixed(1)} | ${r.inProcessTtftMs.toFixed(1)} |`,
  ),
  ``,
].join("\n");
writeFileSync("bench/results/single-stream.md", md);
console.log(md);
