/**
 * `npm run soak -- --minutes 30`: the soak (harness/soak.ts) against a service
 * it starts on two generated tiny variants (swapped between), with engine
 * kills on a schedule; the report goes to bench/results/soak.{md,json}. Exit
 * code 1 when any call ended unexpectedly or hung, a swap failed, a fault was
 * not survived, or slots and queue were not empty at the end.
 *   npm run soak -- [--minutes 30] [--workers 6] [--swap-every 30] [--kill-every 120] [--seed 1]
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { SHAPES, writeSyntheticModel } from "../src/synthetic/model.js";
import { writeReport } from "./report-files.js";
import { startBenchServer } from "./server-process.js";
import { runSoak, soakMarkdown } from "../harness/soak.js";

const opts = new Command("soak")
  .option("--minutes <n>", "how long", "30")
  .option("--workers <n>", "concurrent callers", "6")
  .option("--swap-every <s>", "seconds between swaps", "30")
  .option("--kill-every <s>", "seconds between engine kills (0: none)", "120")
  .option("--seed <n>", "random seed", "1")
  .option("--out <dir>", "results folder", "bench/results")
  .parse()
  .opts<{ minutes: string; workers: string; swapEvery: string; killEvery: string; seed: string; out: string }>();

const modelsDir = mkdtempSync(join(os.tmpdir(), "airavata-soak-"));
for (const type of ["q4_0", "q8_0"] as const) {
  writeSyntheticModel({ path: join(modelsDir, `tiny.${type}.gguf`), shape: SHAPES.tiny, type, name: "airavata-synthetic-tiny" });
}
const token = randomBytes(24).toString("hex");
const server = await startBenchServer(
  ["--models-dir", modelsDir, "--variant", "tiny.q4_0", "--parallel", "4", "--max-queue", "16"],
  { AIRAVATA_ADMIN_TOKEN: token, AIRAVATA_MODEL: "", HF_ENDPOINT: "https://soak.invalid" },
);
let report;
try {
  report = await runSoak(
    {
      address: `127.0.0.1:${server.port}`,
      adminToken: token,
      variants: ["tiny.q4_0", "tiny.q8_0"],
      durationMs: Number(opts.minutes) * 60_000,
      workers: Number(opts.workers),
      swapEveryMs: Number(opts.swapEvery) * 1000,
      killEngineEveryMs: Number(opts.killEvery) * 1000,
      serverPid: server.child.pid!,
      seed: Number(opts.seed),
    },
    (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`),
  );
} finally {
  await server.stop();
}
const where = `started on two generated tiny variants (tiny.q4_0, tiny.q8_0), ${os.availableParallelism()} cores`;
writeReport(opts.out, "soak", { service: where, ...report }, soakMarkdown(report, where));
const clean =
  report.unexpected.length === 0 &&
  report.hung === 0 &&
  report.swaps.failed === 0 &&
  report.faults.survived === report.faults.injected &&
  report.end.running === 0 &&
  report.end.waiting === 0;
process.exit(clean ? 0 : 1);
