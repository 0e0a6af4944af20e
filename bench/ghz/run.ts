/**
 * `npm run bench:ghz`: ghz load runs of Generate (server streaming) and
 * Tokenize at several concurrency levels, from the configs in bench/ghz/, a
 * fixed number of calls each with a time bound; summarised as p50/p95/p99
 * latency, calls/s and errors per level in bench/results/ghz.{md,json,svg}.
 * It starts the service on a model (or uses --address); without ghz on the
 * PATH it says how to install it and measures nothing.
 *   npm run bench:ghz -- [--address host:port | --model models/synthetic/small.q4_0.gguf] [--concurrency 1,4,16,64]
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { lineChart } from "../chart.js";
import { startBenchServer } from "../server-process.js";
import { type GhzReport, INSTALL_GHZ, loadConfigs, runConfig, type RunSummary, summarizeReport } from "./report.js";

const opts = new Command("bench:ghz")
  .option("--address <host:port>", "a running service (otherwise one is started on --model)")
  .option("--model <path>", "GGUF model for the service this starts", "models/synthetic/small.q4_0.gguf")
  .option("--concurrency <list>", "concurrency levels", "1,4,16,64")
  .option("--out <dir>", "results folder", "bench/results")
  .parse()
  .opts<{ address?: string; model: string; concurrency: string; out: string }>();

const ghz = process.env.GHZ ?? "ghz";
const version = spawnSync(ghz, ["--version"], { encoding: "utf8" });
if (version.error || version.status !== 0) {
  console.error(INSTALL_GHZ);
  process.exit(1);
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
const rows: { config: string; call: string; concurrency: number; summary: RunSummary }[] = [];
try {
  for (const { file, config } of loadConfigs()) {
    for (const c of levels) {
      const path = join(scratch, `${file}.${c}.json`);
      writeFileSync(path, JSON.stringify(runConfig(config, c, host)));
      const run = spawnSync(ghz, ["--config", path], { encoding: "utf8", maxBuffer: 256 * 2 ** 20 });
      if (run.status !== 0 && run.stdout.trim() === "") throw new Error(`ghz failed on ${file} at ${c}: ${run.stderr}`);
      const summary = summarizeReport(JSON.parse(run.stdout) as GhzReport);
      rows.push({ config: file, call: config.call, concurrency: c, summary });
      process.stderr.write(`${file} c=${c}: ${summary.calls} calls, ${summary.callsPerSecond.toFixed(1)}/s\n`);
    }
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
  await server?.stop();
}

const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}, ${version.stdout.trim()}`;
mkdirSync(opts.out, { recursive: true });
writeFileSync(`${opts.out}/ghz.json`, `${JSON.stringify({ date: new Date().toISOString(), machine, host, rows }, null, 2)}\n`);
const f = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : "–");
const md = [
  "# ghz load runs",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- service: ${opts.address ?? `started on ${opts.model}`}; configs: bench/ghz/*.json`,
  "",
  "| config | concurrency | calls | calls/s | p50 ms | p95 ms | p99 ms | statuses | errors |",
  "|---|---:|---:|---:|---:|---:|---:|---|---:|",
  ...rows.map(
    ({ config, concurrency, summary: s }) =>
      `| ${config} | ${concurrency} | ${s.calls} | ${f(s.callsPerSecond)} | ${f(s.p50Ms)} | ${f(s.p95Ms)} | ${f(s.p99Ms)} | ` +
      `${Object.entries(s.statuses)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")} | ${s.errors} |`,
  ),
  "",
].join("\n");
writeFileSync(`${opts.out}/ghz.md`, md);
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
console.log(md);
