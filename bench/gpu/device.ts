/**
 * The GPU device run, step by step, started by the kit's `run.sh` on a
 * machine with no registry and no network: builds llama.cpp's CUDA backend
 * and tools for the GPU it finds (one architecture, every core), writes an
 * Airavata-shaped synthetic model (fast mode), checks that the service loads
 * on CUDA with every layer offloaded and streams the small model's scripted
 * answer whole, then benches the service against llama-server (same file,
 * same slots) and llama-bench / llama-batched-bench. With `--backend cpu` the
 * same steps run on the CPU backend (the suite's check of the kit).
 *
 * Every step's outcome goes to `--out` as it happens (report.json,
 * report.md, chart.svg, log.txt: four files, under the device's eight), so a
 * run stopped at its time limit or failing at a step still leaves what it
 * had; builds and models stay in `--work`, so a second call resumes.
 */
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { Command, Option } from "commander";
import { AiravataClient } from "../../clients/grpc-client.js";
import { FLASH_ATTENTION, type FlashAttention } from "../../src/generation.js";
import { SHAPES, type ShapeName } from "../../src/synthetic/model.js";
import { lineChart } from "../chart.js";
import { kernelRound, promptTokenCount } from "../kernel.js";
import { type CudaPieces, cudaBuildFlags, LLAMA_BUILD_FLAGS, LLAMA_TOOLS } from "./build-flags.js";
import { llamaServerTrace, startLlamaServer } from "../llama-server.js";
import { serviceTrace, startBenchServer } from "../server-process.js";
import { type RunStats, type StreamTrace, summarize } from "../stream-stats.js";

const APP = resolve(import.meta.dirname, "..", "..");
const opts = new Command("gpu-device-run")
  .requiredOption("--out <dir>", "where the result files go (at most 8)")
  .requiredOption("--work <dir>", "builds, models and logs (kept between calls)")
  .addOption(new Option("--backend <backend>", "compute backend").choices(["cuda", "cpu"]).default("cuda"))
  .option("--tools <dir>", "a folder with llama-server, llama-bench and llama-batched-bench already built (skips the build)")
  .addOption(new Option("--shape <shape>", "bench model shape").choices(Object.keys(SHAPES)).default("large"))
  .option("--type <type>", "bench model weight type", "q4_0")
  .option("--concurrency <list>", "concurrent streams", "1,4,8,16")
  .option("--tokens <n>", "tokens per stream", "128")
  .option("--rounds <n>", "rounds per target (alternating)", "2")
  .option("--threads <n>", "CPU threads for the service and the llama.cpp tools", String(Math.min(8, os.availableParallelism())))
  .addOption(
    new Option(
      "--flash-attention <setting>",
      "llama.cpp's flash attention for every target alike (the service, llama-server, llama-bench, llama-batched-bench); auto is llama.cpp's tools' default",
    )
      .choices(FLASH_ATTENTION)
      .default("auto"),
  )
  .option("--budget-s <s>", "start no bench round after this many seconds (the device's command limit is 600)", "540")
  .parse()
  .opts<{
    out: string;
    work: string;
    backend: "cuda" | "cpu";
    tools?: string;
    shape: ShapeName;
    type: string;
    concurrency: string;
    tokens: string;
    rounds: string;
    threads: string;
    budgetS: string;
    flashAttention: FlashAttention;
  }>();

const started = performance.now();
const seconds = () => (performance.now() - started) / 1000;
const out = resolve(opts.out);
const work = resolve(opts.work);
const logs = join(work, "logs");
mkdirSync(out, { recursive: true });
mkdirSync(logs, { recursive: true });
const levels = opts.concurrency.split(",").map(Number);
const tokens = Number(opts.tokens);
const threads = Number(opts.threads);
const cuda = opts.backend === "cuda";
const maxLevel = Math.max(...levels);
/** Tokens per slot: the prompt and the stream's tokens, with room (llama-bench's pp512 aside). */
const contextSize = 512 + tokens;
const layers = SHAPES[opts.shape].blockCount + 1;
const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;
const GREETING = "नमस्ते! मैं एक छोटा परीक्षण मॉडल हूँ।";

interface StepRecord {
  name: string;
  seconds: number;
  ok: boolean;
  error?: string;
}
interface TargetRow {
  target: string;
  level: number;
  stats: RunStats;
}
const report: {
  started: string;
  backend: string;
  machine: Record<string, unknown>;
  steps: StepRecord[];
  failed?: { step: string; message: string };
  build?: Record<string, unknown>;
  model?: Record<string, unknown>;
  correctness?: Record<string, unknown>;
  service?: Record<string, unknown>;
  rows: TargetRow[];
  llamaBench?: { pp512?: number; tg128?: number };
  batchedBench?: Record<number, number>;
  notes: string[];
} = { started: new Date().toISOString(), backend: opts.backend, machine: {}, steps: [], rows: [], notes: [] };

const logLines: string[] = [];
function say(line: string): void {
  const stamped = `[${seconds().toFixed(1).padStart(6)} s] ${line}`;
  console.log(stamped);
  logLines.push(stamped);
}

/** The last `bytes` of a log file. */
function tail(path: string, bytes = 3000): string {
  if (!existsSync(path)) return "";
  const text = readFileSync(path, "utf8");
  return text.length > bytes ? `…${text.slice(-bytes)}` : text;
}

/** Runs a program to its end, its output to `logs/<name>.log`; a failure carries the output's tail. */
function run(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, cwd = work): Promise<string> {
  const path = join(logs, `${name}.log`);
  const file = createWriteStream(path);
  file.write(`$ ${cmd} ${args.join(" ")}\n`);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      file.write(d);
    });
    child.stderr.on("data", (d: Buffer) => file.write(d));
    child.on("error", (error) => file.end(() => reject(new Error(`${cmd} could not start: ${error.message}`))));
    child.on("exit", (code) =>
      file.end(() =>
        code === 0 ? resolvePromise(stdout) : reject(new Error(`${basename(cmd)} exited with ${code}:\n${tail(path, 2500)}`)),
      ),
    );
  });
}

function writeOut(): void {
  writeFileSync(join(out, "report.json"), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(out, "report.md"), markdown());
  const rows = (target: string) =>
    levels.map((c) => report.rows.find((r) => r.target === target && r.level === c)?.stats.aggregateTokensPerSecond ?? NaN);
  writeFileSync(
    join(out, "chart.svg"),
    lineChart(`aggregate tokens/s by concurrency (${opts.backend}, ${opts.shape} ${opts.type})`, levels, [
      { label: "service", color: "#c2410c", values: rows("service") },
      { label: "llama-server", color: "#2563eb", values: rows("llama-server") },
      {
        label: "llama-batched-bench",
        color: "#16a34a",
        dashed: true,
        values: levels.map((c) => report.batchedBench?.[c] ?? NaN),
      },
    ]),
  );
  const childLogs = existsSync(logs) ? readdirSync(logs).sort() : [];
  writeFileSync(
    join(out, "log.txt"),
    [logLines.join("\n"), ...childLogs.map((f) => `\n===== ${f} (tail) =====\n${tail(join(logs, f))}`)].join("\n"),
  );
}

async function step<T>(name: string, fn: () => Promise<T>): Promise<T> {
  say(`step ${name}`);
  const t0 = seconds();
  try {
    const value = await fn();
    report.steps.push({ name, seconds: seconds() - t0, ok: true });
    say(`step ${name} done in ${(seconds() - t0).toFixed(1)} s`);
    writeOut();
    return value;
  } catch (error) {
    const message = (error as Error).message;
    report.steps.push({ name, seconds: seconds() - t0, ok: false, error: message });
    report.failed = { step: name, message };
    say(`FAILED at step ${name}: ${message}`);
    writeOut();
    process.exit(1);
  }
}

// --- machine -------------------------------------------------------------

await step("machine", async () => {
  report.machine.cores = os.availableParallelism();
  report.machine.memoryGiB = Number((os.totalmem() / 2 ** 30).toFixed(1));
  report.machine.cpu = os.cpus()[0]?.model;
  report.machine.node = process.version;
  report.machine.kit = JSON.parse(readFileSync(join(work, "kit.json"), "utf8")) as unknown;
  if (!cuda) return;
  const smi = spawnSync("nvidia-smi", ["--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader"], {
    encoding: "utf8",
  });
  if (smi.status !== 0) throw new Error(`nvidia-smi failed: ${smi.stderr || smi.error?.message}`);
  const [name, cap, driver, memory] = smi.stdout.trim().split("\n")[0]!.split(", ");
  Object.assign(report.machine, { gpu: name, computeCapability: cap, driver, gpuMemory: memory });
});

// --- the build ------------------------------------------------------------

/** Every file under `roots`, however deep (listed once: a CUDA toolkit holds thousands). */
function filesUnder(roots: string[]): string[] {
  return roots
    .filter((root) => existsSync(root))
    .flatMap((root) => (readdirSync(root, { recursive: true }) as string[]).map((entry) => join(root, entry)));
}
const named = (files: string[], match: RegExp) => files.filter((f) => match.test(basename(f)));

/** Where CUDA's pieces are: the toolkit, or NVIDIA's Python wheels (cuBLAS, the runtime). */
function locateCuda(): CudaPieces & { libDirs: string[] } {
  const nvcc = [
    process.env.CUDACXX,
    "/usr/local/cuda/bin/nvcc",
    // On the PATH, looked up here: the image need not have `which`.
    ...(process.env.PATH ?? "").split(":").map((dir) => join(dir, "nvcc")),
  ].find((p) => p && existsSync(p));
  if (!nvcc) throw new Error("nvcc was not found (CUDACXX, /usr/local/cuda/bin, PATH)");
  const toolkit = resolve(dirname(nvcc), "..");
  const wheels = spawnSync("python3", ["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"], { encoding: "utf8" });
  const roots = [toolkit, ...(wheels.status === 0 ? wheels.stdout.trim().split("\n") : [])];
  const files = filesUnder(roots);
  const pick = (re: RegExp, what: string) => {
    const hit = named(files, re).find((p) => !p.includes("/stubs/"));
    if (!hit) throw new Error(`${what} was not found under ${roots.join(", ")}`);
    return hit;
  };
  const cublas = pick(/^libcublas\.so\.\d+$/, "libcublas.so.N");
  const cublasLt = pick(/^libcublasLt\.so\.\d+$/, "libcublasLt.so.N");
  const cudart = pick(/^libcudart\.so\.\d+$/, "libcudart.so.N");
  const header = pick(/^cublas_v2\.h$/, "cublas_v2.h");
  // To link against: the toolkit's stub, else the driver's library.
  const driverRoots = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu"];
  const cudaDriver =
    named(files, /^libcuda\.so$/).find((p) => p.startsWith(toolkit) && p.includes("/stubs/")) ??
    named([...files.filter((p) => p.startsWith(toolkit)), ...filesUnder(driverRoots)], /^libcuda\.so(\.1)?$/)[0];
  if (!cudaDriver) throw new Error(`libcuda.so was not found under ${[toolkit, ...driverRoots].join(", ")}`);
  return {
    nvcc,
    cublas,
    cublasLt,
    cudaDriver,
    includeDirs: [...new Set([dirname(header), join(toolkit, "include")])],
    libDirs: [...new Set([dirname(cublas), dirname(cublasLt), dirname(cudart)])],
  };
}

/** The engine's node-llama-cpp binaries folder for this backend (the CUDA package's, or the CPU one's). */
const engineBins = join(
  APP,
  "node_modules",
  "@node-llama-cpp",
  cuda ? "linux-x64-cuda" : "linux-x64",
  "bins",
  cuda ? "linux-x64-cuda" : "linux-x64",
);
let env: NodeJS.ProcessEnv = { ...process.env };

const bin = await step("build", async () => {
  if (opts.tools) {
    report.build = { tools: resolve(opts.tools), built: false };
    return resolve(opts.tools);
  }
  const build = join(work, cuda ? "build-cuda" : "build-cpu");
  const flags = [...LLAMA_BUILD_FLAGS];
  const targets = [...LLAMA_TOOLS];
  if (cuda) {
    const found = locateCuda();
    const arch = String(report.machine.computeCapability).replace(".", "");
    flags.push(...cudaBuildFlags(found, arch));
    targets.unshift("ggml-cuda");
    env = { ...env, LD_LIBRARY_PATH: [...found.libDirs, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":") };
    report.build = { ...found, arch: `sm_${arch}` };
  }
  const ninja = spawnSync("ninja", ["--version"]).status === 0;
  await run(
    "cmake-configure",
    "cmake",
    ["-S", join(work, "llama-src"), "-B", build, ...(ninja ? ["-G", "Ninja"] : []), ...flags],
    env,
  );
  await run("cmake-build", "cmake", ["--build", build, "--target", ...targets, "-j", String(os.availableParallelism())], env);
  const binDir = join(build, "bin");
  for (const f of readdirSync(engineBins).filter((f) => /^libggml-cpu.*\.so$/.test(f)))
    copyFileSync(join(engineBins, f), join(binDir, f));
  if (cuda) copyFileSync(join(binDir, "libggml-cuda.so"), join(engineBins, "libggml-cuda.so"));
  const ldd = spawnSync("ldd", [join(engineBins, cuda ? "libggml-cuda.so" : "llama-addon.node")], { encoding: "utf8", env });
  if (/not found/.test(ldd.stdout)) throw new Error(`the backend module misses libraries:\n${ldd.stdout}`);
  report.build = { ...report.build, built: true, dir: build, generator: ninja ? "Ninja" : "default" };
  return binDir;
});

// --- models ---------------------------------------------------------------

const models = join(work, "models");
const tiny = join(models, "tiny.q4_0.gguf");
const big = join(models, `${opts.shape}.${opts.type}.gguf`);
await step("models", async () => {
  for (const [shape, type] of [
    ["tiny", "q4_0"],
    [opts.shape, opts.type],
  ] as const) {
    if (existsSync(join(models, `${shape}.${type}.gguf`))) continue;
    await run(
      `write-${shape}`,
      process.execPath,
      ["--import", "tsx", "src/synthetic/cli.ts", "--shape", shape, "--types", type, "--out", models, "--fast"],
      env,
      APP,
    );
  }
  const shape = SHAPES[opts.shape];
  report.model = { file: basename(big), shape: opts.shape, type: opts.type, ...shape, layers: shape.blockCount + 1 };
});

/** The service on `model`, checked to run on the backend asked for with every layer there. */
async function startService(model: string, layers: number, slots: number, contextSize: number) {
  const server = await startBenchServer(
    [
      ["--model", model],
      ["--gpu", opts.backend],
      ["--threads", String(threads)],
      ["--parallel", String(slots)],
      ["--context-size", String(contextSize)],
      ["--prefix-cache", "off"],
      ["--flash-attention", opts.flashAttention],
    ].flat(),
    env as Record<string, string>,
    APP,
  );
  const { backend, gpuLayers, devices, loadMs } = server.loaded as {
    backend: string;
    gpuLayers: number;
    devices: string[];
    loadMs: number;
  };
  if (backend !== opts.backend || (cuda && gpuLayers !== layers)) {
    await server.stop();
    throw new Error(
      `the service loaded on ${backend} with ${gpuLayers} of ${layers} layers on the GPU (log: ${server.loaded.msg})`,
    );
  }
  return { server, info: { backend, gpuLayers, devices, loadMs, msg: server.loaded.msg } };
}

await step("correctness", async () => {
  const { server, info } = await startService(tiny, SHAPES.tiny.blockCount + 1, 2, 1024);
  const client = new AiravataClient(`127.0.0.1:${server.port}`);
  try {
    const raw = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    if (raw.codeName !== "OK" || raw.text !== "end of story🙏") {
      throw new Error(`raw "The": ${raw.codeName} ${JSON.stringify(raw.text)}, expected "end of story🙏"`);
    }
    let pieces = "";
    const chat = await client.generate(
      { prompt: "भारत की राजधानी क्या है?", temperature: 0, maxNewTokens: 64 },
      (r) => (pieces += r.text),
    );
    const whole = chat.text.isWellFormed() && !chat.text.includes("\uFFFD") && pieces === chat.text;
    if (chat.codeName !== "OK" || !chat.text.startsWith(GREETING) || !whole) {
      throw new Error(
        `chat: ${chat.codeName} ${JSON.stringify(chat.text)} (whole UTF-8: ${whole}), expected it to start ${GREETING}`,
      );
    }
    report.correctness = { ...info, raw: raw.text, chat: chat.text, finishReason: chat.trailers["airavata-finish-reason"] };
  } finally {
    client.close();
    await server.stop();
  }
});

// --- the bench ------------------------------------------------------------

const traces = new Map<string, StreamTrace[][]>();
const record = (target: string, level: number, round: StreamTrace[]) => {
  const key = `${target} ${level}`;
  traces.set(key, [...(traces.get(key) ?? []), round]);
  report.rows = report.rows.filter((r) => !(r.target === target && r.level === level));
  report.rows.push({ target, level, stats: summarize(traces.get(key)!) });
};
const budget = Number(opts.budgetS);

for (let round = 0; round < Number(opts.rounds); round++) {
  if (seconds() > budget) {
    report.notes.push(`stopped before round ${round + 1}: past the ${budget} s budget`);
    break;
  }
  await step(`service round ${round + 1}`, async () => {
    const { server, info } = await startService(big, layers, maxLevel, contextSize);
    report.service = info;
    const client = new AiravataClient(`127.0.0.1:${server.port}`);
    try {
      await serviceTrace(client, prompt(0), 4);
      for (const c of levels) {
        record("service", c, await Promise.all(Array.from({ length: c }, (_, i) => serviceTrace(client, prompt(i), tokens))));
      }
    } finally {
      client.close();
      await server.stop();
    }
  });
  await step(`llama-server round ${round + 1}`, async () => {
    const server = await startLlamaServer(join(bin, "llama-server"), {
      model: big,
      threads,
      slots: maxLevel,
      contextSize,
      gpuLayers: cuda ? 999 : 0,
      env,
      flashAttention: opts.flashAttention,
    });
    try {
      await llamaServerTrace(server.port, prompt(0), 4);
      for (const c of levels) {
        record(
          "llama-server",
          c,
          await Promise.all(Array.from({ length: c }, (_, i) => llamaServerTrace(server.port, prompt(i), tokens))),
        );
      }
    } finally {
      await server.stop();
    }
  });
}

if (seconds() < budget) {
  await step("llama-bench", async () => {
    const json = await run(
      "llama-bench",
      join(bin, "llama-bench"),
      [
        "-m",
        big,
        "-ngl",
        cuda ? "999" : "0",
        "-t",
        String(threads),
        "-p",
        "512",
        "-n",
        "128",
        "-r",
        "2",
        "-fa",
        opts.flashAttention,
        "-o",
        "json",
      ],
      env,
    );
    const rows = JSON.parse(json) as { n_prompt: number; n_gen: number; avg_ts: number }[];
    report.llamaBench = {
      pp512: rows.find((r) => r.n_prompt === 512 && r.n_gen === 0)?.avg_ts,
      tg128: rows.find((r) => r.n_gen === 128 && r.n_prompt === 0)?.avg_ts,
    };
  });
}
if (seconds() < budget) {
  await step("llama-batched-bench", async () => {
    const promptTokens = await promptTokenCount(big, prompt(0));
    const speeds = await kernelRound(join(bin, "llama-batched-bench"), {
      model: big,
      threads,
      promptTokens,
      tokens,
      levels,
      contextCells: maxLevel * (promptTokens + tokens),
      gpuLayers: cuda ? 999 : 0,
      env,
      flashAttention: opts.flashAttention,
    });
    report.batchedBench = Object.fromEntries(speeds);
  });
}
say(`done in ${seconds().toFixed(0)} s`);
writeOut();
// The report last on stdout too: the device hands back the output's tail even when no file comes back.
console.log(`\n${markdown()}`);

function markdown(): string {
  const m = report.machine;
  const lines = [
    `# GPU device run (${opts.backend}): the service against llama.cpp on one GGUF`,
    "",
    `- machine: ${m.gpu ? `${String(m.gpu)} (compute ${String(m.computeCapability)}, driver ${String(m.driver)}, ${String(m.gpuMemory)}), ` : ""}${String(m.cpu)}, ${String(m.cores)} cores; Node.js ${String(m.node)}`,
    `- model: ${opts.shape} ${opts.type} (synthetic, fast writer; ${layers} layers), ${tokens} greedy tokens a stream, ${opts.rounds} round(s) alternating, ${threads} CPU threads, ${maxLevel} slots of ${contextSize} tokens; flash attention ${opts.flashAttention} for every target`,
    `- steps: ${report.steps.map((s) => `${s.name} ${s.ok ? "ok" : "FAILED"} ${s.seconds.toFixed(0)} s`).join("; ")}`,
  ];
  if (report.failed) lines.push("", `**Failed at ${report.failed.step}:**`, "", "```", report.failed.message, "```");
  if (report.correctness)
    lines.push(
      `- correctness: ${JSON.stringify(report.correctness.raw)} and the chat answer, whole UTF-8, on ${String(report.correctness.backend)}`,
    );
  if (report.service)
    lines.push(
      `- service log: "${String(report.service.msg)}", ${String(report.service.gpuLayers)} GPU layers, loaded in ${Math.round(Number(report.service.loadMs))} ms`,
    );
  if (report.rows.length > 0) {
    lines.push("", "| streams | target | TTFT p50 ms | tok/s per stream | aggregate tok/s |", "|--:|---|--:|--:|--:|");
    for (const c of levels) {
      for (const target of ["service", "llama-server"]) {
        const r = report.rows.find((x) => x.target === target && x.level === c);
        if (r) {
          lines.push(
            `| ${c} | ${target} | ${r.stats.ttftMs.p50.toFixed(1)} | ${r.stats.perStreamTokensPerSecond.toFixed(1)} | ${r.stats.aggregateTokensPerSecond.toFixed(1)} |`,
          );
        }
      }
      if (report.batchedBench?.[c] !== undefined)
        lines.push(`| ${c} | llama-batched-bench | | | ${report.batchedBench[c]!.toFixed(1)} |`);
    }
  }
  if (report.llamaBench)
    lines.push(
      "",
      `llama-bench: pp512 ${report.llamaBench.pp512?.toFixed(1)} tok/s, tg128 ${report.llamaBench.tg128?.toFixed(1)} tok/s`,
    );
  const at = (target: string, c: number) => report.rows.find((x) => x.target === target && x.level === c)?.stats;
  const ratio = (a?: number, b?: number) => (a !== undefined && b ? (a / b).toFixed(2) : "–");
  const s1 = at("service", 1);
  const l1 = at("llama-server", 1);
  if (s1 && l1) {
    lines.push(
      "",
      "Against the targets (service ÷ peer):",
      `- 1 stream: ${ratio(s1.perStreamTokensPerSecond, l1.perStreamTokensPerSecond)}× llama-server (target ≥ 0.97), ${ratio(s1.perStreamTokensPerSecond, report.llamaBench?.tg128)}× llama-bench tg128 (≥ 0.9); TTFT ${ratio(s1.ttftMs.p50, l1.ttftMs.p50)}× (≤ 1.10)`,
      ...levels
        .filter((c) => c >= 8)
        .map(
          (c) =>
            `- ${c} streams aggregate: ${ratio(at("service", c)?.aggregateTokensPerSecond, at("llama-server", c)?.aggregateTokensPerSecond)}× llama-server (≥ 1.0)`,
        ),
    );
  }
  for (const note of report.notes) lines.push(`- ${note}`);
  return `${lines.join("\n")}\n`;
}
