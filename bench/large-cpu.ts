/**
 * The Airavata-sized synthetic model on this machine's CPU, once: does what
 * the service says of a 7B at 4 slots × 2,048 tokens hold at that size?
 *
 *   npx tsx bench/large-cpu.ts [--model models/synthetic/large.q4_0.gguf] [--parallel 4]
 *     [--context-size 2048] [--threads 2] [--tokens 8] [--memory-budget 12GB] [--out bench/results/large-cpu]
 *
 * One service process, the model in a models folder of its own beside a hard
 * link of it under a second name (a second variant of the same size):
 * 1. load: the "model loaded" line's load time and decode-step times;
 * 2. sizes: ListVariants' parameter count, file size and bits per weight;
 * 3. a few tokens on every slot at once: trailers' TTFT and decode speed;
 * 4. memory: the engine process's resident set (whole, anonymous, file-backed,
 *    its peak) against node-llama-cpp's estimate, as the service's own memory
 *    check reports it (LoadVariant of the second name under --memory-budget:
 *    refused with the numbers);
 * 5. the swap's memory check: SwapVariant without downtime refused (the two do
 *    not fit together in the budget), then with allow_downtime done, and a
 *    stream from the new one.
 * Writes <out>/large-cpu.json and large-cpu.md.
 */
import { linkSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { Command } from "commander";
import { AdminClient, AiravataClient } from "../clients/grpc-client.js";
import { enginePids, memoryMiB } from "../harness/proc.js";
import { SwapPhase } from "../src/gen/airavata/v1/admin_pb.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("large-cpu")
  .option("--model <path>", "the 7B-shaped GGUF", "models/synthetic/large.q4_0.gguf")
  .option("--parallel <n>", "slots", "4")
  .option("--context-size <n>", "tokens per slot", "2048")
  .option("--threads <n>", "decode threads", "2")
  .option("--tokens <n>", "tokens per stream", "8")
  .option("--memory-budget <size>", "the service's memory budget: room for one such model, not two", "12GB")
  .option("--out <dir>", "result folder", "bench/results/large-cpu")
  .parse()
  .opts<{
    model: string;
    parallel: string;
    contextSize: string;
    threads: string;
    tokens: string;
    memoryBudget: string;
    out: string;
  }>();

const TOKEN = "large-cpu-bench-token-0123456789";
const model = resolve(opts.model);
const id = basename(model, ".gguf").toLowerCase();
const twinId = `${id.replace(/\.[^.]+$/, "")}-twin${id.slice(id.lastIndexOf("."))}`;
const slots = Number(opts.parallel);
const tokens = Number(opts.tokens);
const log = (line: string) => console.error(`[large-cpu] ${line}`);

const modelsDir = mkdtempSync(join(tmpdir(), "airavata-large-"));
linkSync(model, join(modelsDir, `${id}.gguf`));
linkSync(model, join(modelsDir, `${twinId}.gguf`));
const started = performance.now();
const server = await startBenchServer(
  [
    ["--models-dir", modelsDir],
    ["--variant", id],
    ["--parallel", opts.parallel],
    ["--context-size", opts.contextSize],
    ["--threads", opts.threads],
    ["--memory-budget", opts.memoryBudget],
    ["--gpu", "cpu"],
  ].flat(),
  { HF_ENDPOINT: "https://airavata-bench.invalid", AIRAVATA_ADMIN_TOKEN: TOKEN },
);
const wallLoadS = (performance.now() - started) / 1000;
const address = `127.0.0.1:${server.port}`;
const client = new AiravataClient(address);
const admin = new AdminClient(address, TOKEN);
try {
  const loaded = server.loaded as { loadMs: number; stepMs: number[]; sequences: number; threads: number; contextSize: number };
  log(
    `loaded in ${(loaded.loadMs / 1000).toFixed(1)} s (wall ${wallLoadS.toFixed(1)} s); steps ${JSON.stringify(loaded.stepMs)}`,
  );
  const [engine] = enginePids(server.child.pid!);
  const afterLoad = memoryMiB(engine!);

  const variants = await admin.listVariants();
  const entry = variants.response?.variants.find((v) => v.id === id);

  log(`${slots} streams of ${tokens} tokens`);
  const streams = await Promise.all(
    Array.from({ length: slots }, (_, i) =>
      client.generate({ prompt: `भारत की राजधानी क्या है? (${i})`, maxNewTokens: tokens, temperature: 0 }),
    ),
  );
  for (const s of streams) if (s.codeName !== "OK") throw new Error(`a stream ended ${s.codeName}: ${s.message}`);
  const afterStreams = memoryMiB(engine!);

  // The service's own estimate, as its memory check states it: the twin does not fit beside the model.
  const load = await admin.loadVariant({ variantId: twinId });
  log(`LoadVariant ${twinId}: ${load.codeName}: ${load.message}`);
  const refusedSwap = await admin.swapVariant({ variantId: twinId });
  log(`SwapVariant ${twinId}: ${refusedSwap.codeName}: ${refusedSwap.message}`);
  const swapStarted = performance.now();
  const phases: { phase: string; atS: number }[] = [];
  // Each phase once, when it began (LOADING repeats with the load's progress).
  const swap = await admin.swapVariant({ variantId: twinId, allowDowntime: true }, (p) => {
    const phase = SwapPhase[p.phase] ?? String(p.phase);
    if (phases.at(-1)?.phase !== phase)
      phases.push({ phase, atS: Number(((performance.now() - swapStarted) / 1000).toFixed(1)) });
  });
  log(`SwapVariant ${twinId} allow_downtime: ${swap.codeName} in ${((performance.now() - swapStarted) / 1000).toFixed(1)} s`);
  const after = await client.generate({ prompt: "भारत की राजधानी क्या है?", maxNewTokens: tokens, temperature: 0 });
  const engines = enginePids(server.child.pid!);
  const status = await admin.getStatus();

  const estimate = /needs about ([\d.]+) MiB of RAM; .* beside "[^"]+" \(([\d.]+) MiB\)/.exec(load.message);
  const result = {
    date: new Date().toISOString(),
    machine: `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    model: {
      path: opts.model,
      bytes: statSync(model).size,
      parameters: Number(entry?.parameterCount ?? 0),
      bitsPerWeight: entry?.bitsPerWeight,
      quantization: entry?.quantization,
    },
    settings: {
      slots: loaded.sequences,
      contextSize: loaded.contextSize,
      threads: loaded.threads,
      memoryBudget: opts.memoryBudget,
    },
    load: { loadMs: loaded.loadMs, wallS: wallLoadS, stepMs: loaded.stepMs },
    streams: streams.map((s) => ({
      tokens: s.metrics?.generatedTokens,
      ttftMs: s.metrics?.timeToFirstTokenMs,
      decodeTokensPerSecond: s.metrics?.decodeTokensPerSecond,
      text: s.text,
    })),
    memoryMiB: { afterLoad, afterStreams },
    estimateMiB: estimate ? { twin: Number(estimate[1]), loaded: Number(estimate[2]) } : undefined,
    loadVariant: { code: load.codeName, message: load.message },
    swapWithoutDowntime: { code: refusedSwap.codeName, message: refusedSwap.message },
    swapWithDowntime: { code: swap.codeName, message: swap.message, phases },
    afterSwap: {
      code: after.codeName,
      variant: after.metrics?.variant,
      text: after.text,
      engines: engines.length,
      active: status.response?.activeVariant,
    },
  };
  mkdirSync(opts.out, { recursive: true });
  writeFileSync(join(opts.out, "large-cpu.json"), `${JSON.stringify(result, null, 2)}\n`);
  const f = (n: number | undefined, digits = 0) => (n === undefined || Number.isNaN(n) ? "–" : n.toFixed(digits));
  const md = [
    `# The 7B-shaped model on the CPU (${result.date.slice(0, 10)})`,
    "",
    `Machine: ${result.machine}. Model: \`${opts.model}\`, ${(result.model.parameters / 1e9).toFixed(2)}B parameters, ${result.model.quantization}, ${(result.model.bytes / 1e9).toFixed(2)} GB, ${f(result.model.bitsPerWeight, 2)} bits per weight.`,
    `Service: ${result.settings.slots} slots × ${result.settings.contextSize} tokens, ${result.settings.threads} threads, memory budget ${opts.memoryBudget}.`,
    "",
    `Command: \`npx tsx bench/large-cpu.ts --model ${opts.model} --parallel ${opts.parallel} --context-size ${opts.contextSize} --threads ${opts.threads} --tokens ${opts.tokens} --memory-budget ${opts.memoryBudget}\``,
    "",
    `- load: ${f(loaded.loadMs / 1000, 1)} s in the engine (${f(wallLoadS, 1)} s from start to "model loaded"); decode steps by tokens in the step: ${loaded.stepMs
      .map((ms, n) => (n === 0 ? "" : `${n}: ${f(ms)} ms`))
      .filter(Boolean)
      .join(", ")}`,
    `- ${slots} streams at once, ${tokens} greedy tokens each: TTFT ${streams.map((s) => f(s.metrics?.timeToFirstTokenMs)).join(" / ")} ms; decode ${streams.map((s) => f(s.metrics?.decodeTokensPerSecond, 2)).join(" / ")} tok/s per stream`,
    "",
    "| engine process memory (MiB) | resident | anonymous | file-backed (the mapped GGUF) | peak resident |",
    "|--|--:|--:|--:|--:|",
    `| after load | ${f(afterLoad.rss)} | ${f(afterLoad.anon)} | ${f(afterLoad.file)} | ${f(afterLoad.peak)} |`,
    `| after ${slots} streams | ${f(afterStreams.rss)} | ${f(afterStreams.anon)} | ${f(afterStreams.file)} | ${f(afterStreams.peak)} |`,
    "",
    `node-llama-cpp's estimate for the loaded variant, as the memory check states it: ${f(result.estimateMiB?.loaded)} MiB: ${result.estimateMiB ? f((result.estimateMiB.loaded / afterStreams.anon) * 100) : "–"}% of the anonymous resident set (weights as the CPU backend holds them, KV cache, buffers), ${result.estimateMiB ? f((result.estimateMiB.loaded / afterStreams.peak) * 100) : "–"}% of the peak resident set, which also counts the mapped file's page cache (clean, shared by every process mapping it); for the twin: ${f(result.estimateMiB?.twin)} MiB.`,
    "",
    `- LoadVariant of the twin: **${load.codeName}**: ${load.message}`,
    `- SwapVariant to the twin: **${refusedSwap.codeName}**: ${refusedSwap.message}`,
    `- SwapVariant with allow_downtime: **${swap.codeName}**, phases ${phases.map((p) => `${p.phase} ${p.atS} s`).join(", ")}; then a stream: ${after.codeName} from ${after.metrics?.variant}, ${engines.length} engine process(es), active ${result.afterSwap.active}`,
    "",
  ].join("\n");
  writeFileSync(join(opts.out, "large-cpu.md"), md);
  console.log(md);
  if (streams.some((s) => (s.metrics?.generatedTokens ?? 0) === 0)) process.exitCode = 1;
} finally {
  client.close();
  admin.close();
  await server.stop();
  rmSync(modelsDir, { recursive: true, force: true });
}
