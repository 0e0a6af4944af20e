/**
 * `npm run bench`: token-level latency and throughput at several concurrency
 * levels, for the service over gRPC (the project's grpc-js client), for
 * node-llama-cpp in-process (the no-RPC limit) and for llama.cpp's own
 * llama-server (built from node-llama-cpp's bundled source), on the same GGUF,
 * in one run, rounds rotating the order of the targets, for one or more decode
 * thread counts. Writes bench/results/bench.{json,md,svg}.
 *   npm run bench -- [--model models/synthetic/small.q4_0.gguf] [--concurrency 1,2,4,8] [--tokens 128] [--rounds 3] [--threads 1,2]
 */
import { execFile } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import os from "node:os";
import { promisify } from "node:util";
import { Command, Option } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { safeThreadCount } from "../src/engine/child/thread-tuner.js";
import { FLASH_ATTENTION, type FlashAttention, THREAD_POOL, type ThreadPool } from "../src/generation.js";
import { preloadEnv, threadPoolFor } from "../src/engine/thread-pool.js";
import { lineChart } from "./chart.js";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { bundledSource, loadedCpuVariant } from "../src/quantize/llama-tools.js";
import { kernelBinary, kernelRound, promptTokenCount } from "./kernel.js";
import { llamaServerBinary, llamaServerTrace, startLlamaServer } from "./llama-server.js";
import { writeReport } from "./report-files.js";
import { cpuMs } from "../harness/proc.js";
import { hopSeconds, openAiTrace, serviceTrace, startBenchServer } from "./server-process.js";
import { median, type RunStats, type StreamTrace, summarize, warmUp } from "./stream-stats.js";

const exec = promisify(execFile);
const cli = new Command("bench")
  .option("--model <path>", "GGUF model", "models/synthetic/small.q4_0.gguf")
  .option("--concurrency <list>", "concurrent streams", "1,2,4,8")
  .option("--tokens <n>", "tokens per stream", "128")
  .option("--rounds <n>", "rounds per target and level", "3")
  .option(
    "--threads <list>",
    'decode thread counts, each for every target; "auto" adds service rounds with --threads auto, set against each target\'s best count',
    String(safeThreadCount()),
  )
  .option(
    "--warm <tokens>",
    "tokens streamed through each fresh server or engine before it is measured (every target alike): a fresh service's V8 still compiles its hot paths over the first few thousand",
    "1024",
  )
  .option("--out <dir>", "results folder", "bench/results")
  .option(
    "--scenario <name>",
    '"streams": concurrent single-turn streams (the tables above); "chat": conversations of --turns turns behind a long shared system prompt, TTFT per turn',
    "streams",
  )
  .option("--turns <n>", "turns per conversation (--scenario chat)", "5")
  .addOption(
    new Option(
      "--flash-attention <setting>",
      "llama.cpp's flash attention for every target alike (the service's --flash-attention, llama-server's --flash-attn, llama-batched-bench's -fa); " +
        "auto (on wherever the backend has it) is the service's default and llama.cpp's tools'",
    )
      .choices(FLASH_ATTENTION)
      .default("auto"),
  )
  .addOption(
    new Option(
      "--thread-pool <setting>",
      "the engine's decode threads, for the service and in-process alike (the service's --thread-pool): persistent (its default) or per-decode",
    )
      .choices(THREAD_POOL)
      .default("persistent"),
  )
  .option(
    "--variants <files>",
    "comma-separated GGUF files: the same load on each, in one service process with all of them loaded (instead of --model and the targets)",
  )
  .option(
    "--targets <list>",
    "service (gRPC), openai (the same service over /v1 and SSE), in-process, llama-server, kernel (llama-server and llama-batched-bench: built from source on first use, minutes); " +
      "with --scenario chat: service, cache-off, llama-server (all three by default)",
    "service,openai,in-process,llama-server,kernel",
  );
cli.parse();
const opts = cli.opts<{
  model: string;
  concurrency: string;
  tokens: string;
  rounds: string;
  threads: string;
  out: string;
  targets: string;
  scenario: string;
  turns: string;
  variants?: string;
  warm: string;
  flashAttention: FlashAttention;
  threadPool: ThreadPool;
}>();
if (opts.variants !== undefined) {
  const files = opts.variants.split(",").filter(Boolean);
  for (const file of files) {
    if (!existsSync(file)) {
      console.error(`no model at ${file}: run \`npm run models\` first`);
      process.exit(1);
    }
  }
  const { variantsScenario } = await import("./variants.js");
  await variantsScenario({
    files,
    threads: Number(opts.threads.split(",")[0]),
    levels: opts.concurrency.split(",").map(Number),
    tokens: Number(opts.tokens),
    rounds: Number(opts.rounds),
    out: opts.out,
    command:
      `npm run bench -- --variants ${opts.variants} --threads ${opts.threads} --concurrency ${opts.concurrency} ` +
      `--tokens ${opts.tokens} --rounds ${opts.rounds}`,
  });
  process.exit(0);
}
if (!existsSync(opts.model)) {
  console.error(`no model at ${opts.model}: run \`npm run models -- --shape small --types q4_0\` first`);
  process.exit(1);
}
if (opts.scenario === "chat") {
  const targets = cli.getOptionValueSource("targets") === "cli" ? opts.targets : undefined;
  const { chatScenario } = await import("./chat.js");
  await chatScenario({
    model: opts.model,
    threads: Number(opts.threads.split(",")[0]),
    levels: opts.concurrency.split(",").map(Number),
    turns: Number(opts.turns),
    tokens: Number(opts.tokens),
    rounds: Number(opts.rounds),
    targets: targets?.split(","),
    flashAttention: opts.flashAttention,
    out: opts.out,
    command:
      `npm run bench -- --scenario chat --model ${opts.model} --threads ${opts.threads} --concurrency ${opts.concurrency} ` +
      `--turns ${opts.turns} --tokens ${opts.tokens} --rounds ${opts.rounds} --flash-attention ${opts.flashAttention}` +
      (targets ? ` --targets ${targets}` : ""),
  });
  process.exit(0);
} else if (opts.scenario !== "streams") {
  console.error(`--scenario: "${opts.scenario}" is not one of streams, chat`);
  process.exit(2);
}
const levels = opts.concurrency.split(",").map(Number);
const threadList = opts.threads.split(",");
const threadCounts = threadList.filter((t) => t !== "auto").map(Number);
const withAuto = threadList.includes("auto");
const slots = Math.max(...levels);
const contextSize = Number(opts.tokens) + 64;
const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;

const ALL_TARGETS = ["service", "openai", "in-process", "llama-server"] as const;
type Target = (typeof ALL_TARGETS)[number];
const wanted = opts.targets.split(",");
for (const t of wanted) if (![...ALL_TARGETS, "kernel"].includes(t)) throw new Error(`unknown target ${t}`);
const llamaServer = wanted.includes("llama-server")
  ? await llamaServerBinary((line) => process.stderr.write(`${line}\n`))
  : undefined;
const TARGETS = ALL_TARGETS.filter((t) => wanted.includes(t) && (t !== "llama-server" || llamaServer));
// The reference with nothing around the decode kernel: streams' tokens/s by thread count and concurrency, per round.
const kernel = wanted.includes("kernel") ? await kernelBinary((line) => process.stderr.write(`${line}\n`)) : undefined;
const kernelSpeeds = new Map<number, Map<number, number[]>>();
const promptTokens = kernel === undefined ? 0 : await promptTokenCount(opts.model, prompt(0));
/** The CPU backend variant node-llama-cpp loads on this machine: the engine's kernels. */
const engineCpuVariant = await (async () => {
  const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
  const variant = loadedCpuVariant();
  await llama.dispose();
  return variant;
})();
/** The CPU variants llama-server loaded, over its rounds (the same as the engine's, unless something is wrong). */
const peerCpuVariants = new Set<string>();

async function inProcessRound(threads: number): Promise<Map<number, StreamTrace[]>> {
  const { stdout } = await exec(
    process.execPath,
    [
      "--import",
      "tsx",
      "bench/in-process-traces.ts",
      opts.model,
      String(threads),
      String(slots),
      String(contextSize),
      opts.tokens,
      opts.concurrency,
      opts.warm,
      opts.flashAttention,
    ],
    // The engine's environment, as the service gives its engine process.
    {
      env: {
        ...preloadEnv(await threadPoolFor(opts.threadPool)),
        UV_THREADPOOL_SIZE: "1",
      },
      maxBuffer: 256 * 2 ** 20,
    },
  );
  const out = new Map<number, StreamTrace[]>();
  for (const line of stdout.trim().split("\n")) {
    const { concurrency, traces } = JSON.parse(line) as { concurrency: number; traces: StreamTrace[] };
    out.set(concurrency, traces);
  }
  return out;
}

/** What the hops cost per token in a service round: the server process's CPU time, and the engine → server hop. */
interface HopCost {
  serverCpuUsPerToken: number;
  /** Mean per streamed message. */
  engineHopUs: number;
  tokensPerMessage: number;
}
const hopCosts = new Map<number | "auto", HopCost[]>();

/**
 * The bench's own CPU per token received, by "target threads": the client's cost, which shares
 * the machine with the server it measures (grpc-js and protobuf for the service, HTTP/1.1 and
 * JSON server-sent events for llama-server).
 */
const clientCpu = new Map<string, number[]>();
function clientCpuPerToken(key: string, since: NodeJS.CpuUsage, tokens: number): void {
  const used = process.cpuUsage(since);
  clientCpu.set(key, [...(clientCpu.get(key) ?? []), (used.user + used.system) / tokens]);
}

/** Messages received over a round's streams: the tokens of one message share an arrival time. */
function messagesIn(round: Map<number, StreamTrace[]>): number {
  return [...round.values()].flat().reduce((n, t) => n + new Set(t.tokenTimes).size, 0);
}

/** Tokens received over a round's streams. */
function tokensIn(round: Map<number, StreamTrace[]>): number {
  return [...round.values()].flat().reduce((n, t) => n + t.tokenTimes.length, 0);
}

/** A service round over gRPC (`via` "grpc"), or over the OpenAI-compatible surface's SSE (`via` "openai"). */
async function serviceRound(threads: number | "auto", via: "grpc" | "openai" = "grpc"): Promise<Map<number, StreamTrace[]>> {
  const server = await startBenchServer([
    "--model",
    opts.model,
    "--gpu",
    "cpu",
    "--threads",
    String(threads),
    "--parallel",
    String(slots),
    "--context-size",
    String(contextSize),
    // As llama-server runs here (no prompt cache): every prompt evaluated whole.
    "--prefix-cache",
    "off",
    "--flash-attention",
    opts.flashAttention,
    "--thread-pool",
    opts.threadPool,
  ]);
  const port = server.port;
  const client = new AiravataClient(`127.0.0.1:${port}`);
  // Warm, over the surface measured: its connection is open before the first timed call, as gRPC's is.
  if (via === "grpc") await client.generate({ prompt: "नमस्ते", raw: true, maxNewTokens: 1 });
  else await openAiTrace(port, "नमस्ते", 1);
  await warmUp(Number(opts.warm), slots, (i) =>
    via === "grpc" ? serviceTrace(client, prompt(i), Number(opts.tokens)) : openAiTrace(port, prompt(i), Number(opts.tokens)),
  );
  const out = new Map<number, StreamTrace[]>();
  const hopBefore = await hopSeconds(port);
  const cpuBefore = cpuMs(server.child.pid!);
  const clientBefore = process.cpuUsage();
  for (const c of levels) {
    const traces = await Promise.all(
      Array.from({ length: c }, (_, i) =>
        via === "grpc" ? serviceTrace(client, prompt(i), Number(opts.tokens)) : openAiTrace(port, prompt(i), Number(opts.tokens)),
      ),
    );
    out.set(c, traces);
  }
  const serverCpu = cpuMs(server.child.pid!) - cpuBefore;
  const tokens = tokensIn(out);
  if (via === "openai") {
    clientCpuPerToken(`openai ${threads}`, clientBefore, tokens);
    client.close();
    await server.stop();
    return out;
  }
  clientCpuPerToken(`service ${threads}`, clientBefore, tokens);
  const hopAfter = await hopSeconds(port);
  // The histogram holds each call's mean hop; every call of the levels streams the same number of tokens.
  const hop = (hopAfter.sum - hopBefore.sum) / (hopAfter.count - hopBefore.count);
  hopCosts.set(threads, [
    ...(hopCosts.get(threads) ?? []),
    { serverCpuUsPerToken: (serverCpu * 1000) / tokens, engineHopUs: hop * 1e6, tokensPerMessage: tokens / messagesIn(out) },
  ]);
  client.close();
  await server.stop();
  return out;
}

async function llamaServerRound(threads: number): Promise<Map<number, StreamTrace[]>> {
  const server = await startLlamaServer(llamaServer!, {
    model: opts.model,
    threads,
    slots,
    contextSize,
    flashAttention: opts.flashAttention,
  });
  peerCpuVariants.add(server.cpuVariant ?? "unknown");
  await llamaServerTrace(server.port, "नमस्ते", 1);
  await warmUp(Number(opts.warm), slots, (i) => llamaServerTrace(server.port, prompt(i), Number(opts.tokens)));
  const out = new Map<number, StreamTrace[]>();
  const clientBefore = process.cpuUsage();
  for (const c of levels) {
    out.set(
      c,
      await Promise.all(Array.from({ length: c }, (_, i) => llamaServerTrace(server.port, prompt(i), Number(opts.tokens)))),
    );
  }
  clientCpuPerToken(`llama-server ${threads}`, clientBefore, tokensIn(out));
  await server.stop();
  return out;
}

const ROUNDS: Record<Target, (threads: number) => Promise<Map<number, StreamTrace[]>>> = {
  service: serviceRound,
  openai: (threads) => serviceRound(threads, "openai"),
  "in-process": inProcessRound,
  "llama-server": llamaServerRound,
};
/** Traces by "target threads" and concurrency, one list of streams per round. */
const collected = new Map<string, Map<number, StreamTrace[][]>>();
for (let round = 0; round < Number(opts.rounds); round++) {
  for (const threads of threadCounts) {
    // Each round starts with a different target, so no target always runs on a warmer machine.
    const order = TARGETS.map((_, i) => TARGETS[(i + round) % TARGETS.length]!);
    for (const target of order) {
      const result = await ROUNDS[target](threads);
      const series = collected.get(`${target} ${threads}`) ?? new Map<number, StreamTrace[][]>();
      for (const [c, traces] of result) series.set(c, [...(series.get(c) ?? []), traces]);
      collected.set(`${target} ${threads}`, series);
      process.stderr.write(`round ${round + 1}: ${target}, ${threads} threads done\n`);
    }
    if (kernel !== undefined) {
      const speeds = await kernelRound(kernel, {
        model: opts.model,
        threads,
        promptTokens,
        tokens: Number(opts.tokens),
        levels,
        contextCells: slots * contextSize,
        flashAttention: opts.flashAttention,
      });
      const series = kernelSpeeds.get(threads) ?? new Map<number, number[]>();
      for (const [c, tps] of speeds) series.set(c, [...(series.get(c) ?? []), tps]);
      kernelSpeeds.set(threads, series);
      process.stderr.write(`round ${round + 1}: kernel, ${threads} threads done\n`);
    }
  }
  if (withAuto && TARGETS.includes("service")) {
    const result = await serviceRound("auto");
    const series = collected.get("service auto") ?? new Map<number, StreamTrace[][]>();
    for (const [c, traces] of result) series.set(c, [...(series.get(c) ?? []), traces]);
    collected.set("service auto", series);
    process.stderr.write(`round ${round + 1}: service, --threads auto done\n`);
  }
}

const table: { target: string; threads: number; concurrency: number; stats: RunStats }[] = [];
for (const threads of threadCounts) {
  for (const target of TARGETS) {
    for (const c of levels)
      table.push({ target, threads, concurrency: c, stats: summarize(collected.get(`${target} ${threads}`)!.get(c)!) });
  }
}
const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
const command =
  `npm run bench -- --model ${opts.model} --concurrency ${opts.concurrency} --tokens ${opts.tokens} --rounds ${opts.rounds} --threads ${opts.threads} --warm ${opts.warm} --flash-attention ${opts.flashAttention} --thread-pool ${opts.threadPool}` +
  (cli.getOptionValueSource("targets") === "cli" ? ` --targets ${opts.targets}` : "");
/** The kernel's tok/s by thread count and concurrency: medians over rounds. */
const kernelMedians = new Map(
  [...kernelSpeeds].map(([threads, series]) => [threads, new Map([...series].map(([c, v]) => [c, median(v)]))]),
);
const f = (n: number) => n.toFixed(1);
/** A target's stats at a thread count and concurrency (undefined when it was not run). */
const statsOf = (target: Target, threads: number, c: number | undefined) =>
  table.find((r) => r.target === target && r.threads === threads && r.concurrency === c)?.stats;
/** a ÷ b to two places, "–" without an a. */
const ratio = (a: number | undefined, b: number) => (a === undefined ? "–" : (a / b).toFixed(2));

/** A markdown table with a row per thread count and concurrency: `intro`, then `columns` after those two. */
function perLevelTable(intro: string, columns: string[], cells: (threads: number, c: number) => string[]): string[] {
  const lines = [
    intro,
    "",
    `| threads | streams | ${columns.join(" | ")} |`,
    `|---:|---:|${columns.map(() => "---:|").join("")}`,
  ];
  for (const threads of threadCounts) {
    for (const c of levels) lines.push(`| ${threads} | ${c} | ${cells(threads, c).join(" | ")} |`);
  }
  return lines;
}

/** The service and in-process over llama-server, per thread count and concurrency (the issue's targets). */
function againstLlamaServer(): string[] {
  return perLevelTable(
    "Over llama-server (same threads, streams and GGUF; tok/s aggregate, TTFT p50):",
    ["service tok/s ÷ llama-server", "in-process tok/s ÷ llama-server", "service TTFT ÷ llama-server"],
    (threads, c) => {
      const base = statsOf("llama-server", threads, c)!;
      const service = statsOf("service", threads, c);
      return [
        ratio(service?.aggregateTokensPerSecond, base.aggregateTokensPerSecond),
        ratio(statsOf("in-process", threads, c)?.aggregateTokensPerSecond, base.aggregateTokensPerSecond),
        ratio(service?.ttftMs.p50, base.ttftMs.p50),
      ];
    },
  );
}

/** The OpenAI surface (SSE over HTTP/1.1) over gRPC, the same service, per thread count and concurrency. */
function openAiOverGrpc(): string[] {
  return [
    ...perLevelTable(
      "The OpenAI-compatible surface over gRPC (the same service; tok/s aggregate, TTFT p50):",
      ["openai tok/s ÷ gRPC", "openai TTFT ÷ gRPC"],
      (threads, c) => {
        const grpc = statsOf("service", threads, c)!;
        const sse = statsOf("openai", threads, c);
        return [ratio(sse?.aggregateTokensPerSecond, grpc.aggregateTokensPerSecond), ratio(sse?.ttftMs.p50, grpc.ttftMs.p50)];
      },
    ),
    "",
  ];
}

/** Each target over llama.cpp's kernel alone: how much of the hardware's speed a server keeps. */
function againstKernel(): string[] {
  return [
    ...perLevelTable(
      `Over llama.cpp's decode kernel alone (\`llama-batched-bench\`: ${promptTokens}-token prompts decoded together, then one token per stream a step;` +
        " no server, no sampling; tok/s aggregate counted as for the servers, medians over rounds). Doing the same work on these kernels," +
        " a server can come near 1.00, not past it beyond run-to-run noise:",
      ["kernel tok/s", "llama-server ÷ kernel", "service ÷ kernel", "in-process ÷ kernel"],
      (threads, c) => {
        const base = kernelMedians.get(threads)!.get(c)!;
        const over = (target: Target) => ratio(statsOf(target, threads, c)?.aggregateTokensPerSecond, base);
        return [f(base), over("llama-server"), over("service"), over("in-process")];
      },
    ),
    "",
  ];
}

/** The service with --threads auto against each target's best fixed count, per concurrency. */
function autoLines(): string[] {
  const auto = collected.get("service auto");
  if (auto === undefined) return [];
  const best = (target: Target, c: number) => {
    const runs = threadCounts.map((t) => ({ t, tps: statsOf(target, t, c)?.aggregateTokensPerSecond ?? 0 }));
    return runs.reduce((a, b) => (b.tps > a.tps ? b : a));
  };
  const lines = [
    "`--threads auto` (the service's default), against each target's best fixed thread count in this run (tok/s aggregate):",
    "",
    "| streams | service auto | service best fixed (threads) | llama-server best (threads) | auto ÷ service best | auto ÷ llama-server best |",
    "|---:|---:|---:|---:|---:|---:|",
  ];
  for (const c of levels) {
    const tps = summarize(auto.get(c)!).aggregateTokensPerSecond;
    const service = best("service", c);
    const server = TARGETS.includes("llama-server") ? best("llama-server", c) : undefined;
    lines.push(
      `| ${c} | ${f(tps)} | ${f(service.tps)} (${service.t}) | ${server ? `${f(server.tps)} (${server.t})` : "–"} | ` +
        `${(tps / service.tps).toFixed(2)} | ${server ? (tps / server.tps).toFixed(2) : "–"} |`,
    );
  }
  lines.push("");
  return lines;
}

/** The per-token cost of the service's two hops, against the time a token takes to decode. */
function hopCostLines(): string[] {
  const lines = [
    "Per-token cost of the hops (service rounds, medians over rounds; decode time per token: TPOT p50 of one in-process stream, of one service stream for auto):",
    "",
    "| threads | engine → server hop µs per message (mean per call) | tokens per message | hop µs per token | server process CPU µs per token | decode ms per token | hop per token ÷ decode | server CPU ÷ decode |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const threads of [...threadCounts, ...(withAuto ? (["auto"] as const) : [])]) {
    const costs = hopCosts.get(threads) ?? [];
    const hop = median(costs.map((c) => c.engineHopUs));
    const cpu = median(costs.map((c) => c.serverCpuUsPerToken));
    const perMessage = median(costs.map((c) => c.tokensPerMessage));
    const decode =
      threads === "auto"
        ? summarize(collected.get("service auto")!.get(levels[0]!)!).timePerOutputTokenMs.p50
        : statsOf("in-process", threads, levels[0])?.timePerOutputTokenMs.p50;
    const pct = (us: number) => (decode === undefined ? "–" : `${((us / 1000 / decode) * 100).toFixed(1)}%`);
    lines.push(
      `| ${threads} | ${f(hop)} | ${perMessage.toFixed(2)} | ${f(hop / perMessage)} | ${f(cpu)} | ${decode === undefined ? "–" : decode.toFixed(2)} | ${pct(hop / perMessage)} | ${pct(cpu)} |`,
    );
  }
  lines.push("");
  return lines;
}

/** The bench client's CPU per token it received, for the targets it reached over the network. */
function clientCpuLines(): string[] {
  const lines = [
    "The bench client's own CPU per token received (same process for both; medians over rounds): it shares the machine with the server it measures.",
    "",
    "| threads | service (grpc-js, protobuf) µs | openai (fetch, SSE JSON) µs | llama-server (HTTP/1.1, JSON events) µs |",
    "|---:|---:|---:|---:|",
  ];
  const cell = (key: string) => (clientCpu.has(key) ? f(median(clientCpu.get(key)!)) : "–");
  for (const threads of threadCounts)
    lines.push(
      `| ${threads} | ${cell(`service ${threads}`)} | ${cell(`openai ${threads}`)} | ${cell(`llama-server ${threads}`)} |`,
    );
  lines.push("");
  return lines;
}

const md = [
  "# Token-level bench",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- model: ${opts.model}; ${opts.tokens} greedy tokens per stream; ${slots} slots; each fresh server or engine warmed with ${opts.warm} tokens first`,
  `- command: \`${command}\``,
  `- flash attention: ${opts.flashAttention} for every target (\`--flash-attention\`); the engine's thread pool (service and in-process): ${opts.threadPool} (\`--thread-pool\`)`,
  `- the service streams with its default \`--stream-interval auto\`: tokens decoded close together arrive in one message, so its ITL p50 can read 0`,
  `- service: gRPC (grpc-js) → server process → engine process; in-process: the same engine code called directly;` +
    ` llama-server: llama.cpp's server built from node-llama-cpp's bundled source, streaming HTTP, no prompt cache`,
  `- kernels: the engine loads node-llama-cpp's prebuilt CPU backend \`libggml-cpu-${engineCpuVariant ?? "?"}\`;` +
    ` llama-server and llama-batched-bench are llama.cpp ${bundledSource().commit.slice(0, 12)} built with GGML_BACKEND_DL and no CPU backend of their own,` +
    ` loading the same prebuilt modules (llama-server loaded: ${[...peerCpuVariants].map((v) => `\`libggml-cpu-${v}\``).join(", ") || "–"})`,
  "",
  "| target | threads | streams | TTFT p50/p95/p99 ms | ITL p50/p95/p99 ms | TPOT p50/p95 ms | e2e p50/p95/p99 ms | tok/s per stream | tok/s aggregate |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ...table.map(
    ({ target, threads, concurrency, stats: s }) =>
      `| ${target} | ${threads} | ${concurrency} | ${f(s.ttftMs.p50)} / ${f(s.ttftMs.p95)} / ${f(s.ttftMs.p99)} | ${f(s.interTokenMs.p50)} / ${f(s.interTokenMs.p95)} / ${f(s.interTokenMs.p99)} | ` +
      `${f(s.timePerOutputTokenMs.p50)} / ${f(s.timePerOutputTokenMs.p95)} | ${f(s.e2eMs.p50)} / ${f(s.e2eMs.p95)} / ${f(s.e2eMs.p99)} | ${f(s.perStreamTokensPerSecond)} | ${f(s.aggregateTokensPerSecond)} |`,
  ),
  "",
  ...(TARGETS.includes("llama-server") ? againstLlamaServer() : ["llama-server was not part of this run."]),
  "",
  ...(TARGETS.includes("openai") && TARGETS.includes("service") ? openAiOverGrpc() : []),
  ...(kernel !== undefined ? againstKernel() : []),
  ...autoLines(),
  ...(TARGETS.includes("service") ? hopCostLines() : []),
  ...clientCpuLines(),
].join("\n");
writeReport(
  opts.out,
  "bench",
  {
    machine,
    command,
    engineCpuVariant,
    peerCpuVariants: [...peerCpuVariants],
    slots,
    table,
    hopCosts: Object.fromEntries(hopCosts),
    kernel: Object.fromEntries([...kernelMedians].map(([threads, byLevel]) => [threads, Object.fromEntries(byLevel)])),
    clientCpuUsPerToken: Object.fromEntries(clientCpu),
  },
  md,
);
// Aggregate tokens/s against concurrency, one line per target and thread count.
const colors: Record<string, string> = {
  service: "#4a7ab5",
  openai: "#8a5ab5",
  "in-process": "#d0803a",
  "llama-server": "#5a9a4a",
};
writeFileSync(
  `${opts.out}/bench.svg`,
  lineChart(
    "aggregate output tokens/s by concurrent streams",
    levels,
    threadCounts
      .flatMap((threads) =>
        TARGETS.map((target) => ({
          label: `${target}, ${threads} thread${threads > 1 ? "s" : ""}`,
          color: colors[target]!,
          dashed: threadCounts.indexOf(threads) > 0,
          values: levels.map((c) => statsOf(target, threads, c)?.aggregateTokensPerSecond ?? Number.NaN),
        })),
      )
      .concat(
        [...kernelMedians].map(([threads, byLevel]) => ({
          label: `kernel alone, ${threads} thread${threads > 1 ? "s" : ""}`,
          color: "#888888",
          dashed: threadCounts.indexOf(threads) > 0,
          values: levels.map((c) => byLevel.get(c) ?? Number.NaN),
        })),
      ),
  ),
);
