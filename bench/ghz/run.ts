/**
 * `npm run bench:ghz`: ghz load runs of Generate (server streaming) and
 * Tokenize at several concurrency levels, from the configs in bench/ghz/, a
 * fixed number of calls each; summarised as p50/p95/p99 latency, calls/s, the
 * statuses the server answered and the errors ghz's own client made, per
 * level, in bench/results/ghz.{md,json,svg}. A level that runs past
 * `--level-timeout` is stopped (SIGINT: ghz reports the calls made so far)
 * and marked so. It starts the service on a model (or uses --address);
 * without ghz on the PATH it says how to install it and measures nothing.
 *   npm run bench:ghz -- [--address host:port | --model models/synthetic/small.q4_0.gguf] [--concurrency 1,4,16,64] [--level-timeout 300]
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { lineChart } from "../chart.js";
import { writeReport } from "../report-files.js";
import { startBenchServer } from "../server-process.js";
import { type GhzReport, INSTALL_GHZ, loadConfigs, runConfig, type RunSummary, summarizeReport } from "./report.js";

const opts = new Command("bench:ghz")
  .option("--address <host:port>", "a running service (otherwise one is started on --model)")
  .option("--model <path>", "GGUF model for the service this starts", "models/synthetic/small.q4_0.gguf")
  .option("--concurrency <list>", "concurrency levels", "1,4,16,64")
  .option("--level-timeout <s>", "seconds a level may run before ghz is stopped and its partial report kept", "300")
  .option("--out <dir>", "results folder", "bench/results")
  .parse()
  .opts<{ address?: string; model: string; concurrency: string; levelTimeout: string; out: string }>();

const ghz = process.env.GHZ ?? "ghz";
const version = spawnSync(ghz, ["--version"], { encoding: "utf8" });
if (version.error || version.status !== 0) {
  console.error(INSTALL_GHZ);
  process.exit(1);
}
// ghz prints its version to stderr.
const ghzVersion = `ghz ${(version.stderr || version.stdout).trim()}`;
const levelTimeoutMs = Number(opts.levelTimeout) * 1000;

/** Runs ghz on a config file; past the time bound, stops it with SIGINT, on which ghz reports what it has. */
function runGhz(configPath: string): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(ghz, ["--config", configPath], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += String(d)));
    child.stderr.on("data", (d: Buffer) => (stderr += String(d)));
    const interrupt = setTimeout(() => child.kill("SIGINT"), levelTimeoutMs);
    const kill = setTimeout(() => child.kill("SIGKILL"), levelTimeoutMs + 30_000);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(interrupt);
      clearTimeout(kill);
      resolve({ stdout, stderr, code });
    });
  });
}
const levels = opts.concurrency.split(",").map(Number);
if (!opts.address && !existsSync(opts.model)) {
  console.error(`no model at ${opts.model}: run \`npm run models -- --shape small --types q4_0\` first, or pass --address`);
  process.exit(1);
}
const maxLevel = Math.max(...levels);
const server = opts.address ? undefined : await startBenchServer(["--model", opts.model, "--max-queue", String(maxLevel * 2)]);
const host = opts.address ?? `127.0.0.1:${server!.port}`;
const scratch = mkdtempSync(join(os.tmpdir(), "airavata-ghz-"));
const rows: { config: string; call: string; concurrency: number; total: number; summary: RunSummary }[] = [];
try {
  for (const { file, config } of loadConfigs()) {
    for (const c of levels) {
      const path = join(scratch, `${file}.${c}.json`);
      const level = runConfig(config, c, host);
      writeFileSync(path, JSON.stringify(level));
      const run = await runGhz(path);
      if (run.stdout.trim() === "") throw new Error(`ghz failed on ${file} at ${c} (exit ${run.code}): ${run.stderr}`);
      const summary = summarizeReport(JSON.parse(run.stdout) as GhzReport);
      const total = level.total;
      rows.push({ config: file, call: config.call, concurrency: c, total, summary });
      process.stderr.write(
        `${file} c=${c}: ${summary.calls} of ${total} calls${summary.endReason === "normal" ? "" : ` (stopped: ${summary.endReason})`}, ` +
          `${summary.callsPerSecond.toFixed(1)}/s\n`,
      );
    }
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
  await server?.stop();
}

const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}, ${ghzVersion}`;
const f = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : "–");
const counts = (byName: Record<string, number>) =>
  Object.entries(byName)
    .map(([name, n]) => `${name} ${n}`)
    .join(", ");
const md = [
  "# ghz load runs",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- service: ${opts.address ?? `started on ${opts.model}`}; configs: bench/ghz/*.json; a level stopped after ${opts.levelTimeout} s`,
  "- statuses: what the server answered; ghz's own errors: calls its client ended itself (its deadline, a closed connection)",
  "",
  "| config | concurrency | calls (of total) | calls/s | p50 ms | p95 ms | p99 ms | statuses from the server | ghz's own errors |",
  "|---|---:|---:|---:|---:|---:|---:|---|---|",
  ...rows.map(
    ({ config, concurrency, total, summary: s }) =>
      `| ${config} | ${concurrency} | ${s.calls} (${total})${s.endReason === "normal" ? "" : ", stopped at the time bound"} | ` +
      `${f(s.callsPerSecond)} | ${f(s.p50Ms)} | ${f(s.p95Ms)} | ${f(s.p99Ms)} | ${counts(s.statuses) || "–"} | ${counts(s.clientErrors) || "none"} |`,
  ),
  "",
].join("\n");
writeReport(opts.out, "ghz", { machine, host, rows }, md);
// p95 latency by concurrency, one line per config.
const colors = ["#4a7ab5", "#d0803a", "#5a9a4a", "#9a4a8a"];
writeFileSync(
  `${opts.out}/ghz.svg`,
  lineChart(
    "p95 latency (ms) by concurrency, ghz",
    levels,
    [...new Set(rows.map((r) => r.config))].map((config, i) => ({
      label: config,
      color: colors[i % colors.length]!,
      values: levels.map((c) => rows.find((r) => r.config === config && r.concurrency === c)?.summary.p95Ms ?? Number.NaN),
    })),
  ),
);
