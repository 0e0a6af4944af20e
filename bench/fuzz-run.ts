/**
 * `npm run fuzz -- --cases 5000`: the fuzzer (harness/fuzz.ts) against a
 * running service (--address) or one it starts on the tiny synthetic model;
 * the report goes to bench/results/fuzz.{md,json}. Exit code 1 if any case
 * hung or was answered as the server's fault, or a good call failed between
 * cases.
 */
import { existsSync } from "node:fs";
import { Command } from "commander";
import { fuzzMarkdown, runFuzz } from "../harness/fuzz.js";
import { writeReport } from "./report-files.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("fuzz")
  .option("--cases <n>", "cases to send", "5000")
  .option("--seed <n>", "random seed (a run repeats with the same seed)", "1")
  .option("--address <host:port>", "a running service (otherwise one is started on --model)")
  .option("--model <path>", "GGUF model for the service this starts", "models/synthetic/tiny.q4_0.gguf")
  .option("--out <dir>", "results folder", "bench/results")
  .option(
    "--linger-limit <s>",
    "seconds after the last case for the server to close slow and idle connections (raise it past a --address server's --idle-timeout)",
    "60",
  )
  .parse()
  .opts<{ cases: string; seed: string; address?: string; model: string; out: string; lingerLimit: string }>();

if (!opts.address && !existsSync(opts.model)) {
  console.error(`no model at ${opts.model}: run \`npm run models -- --shape tiny\` first, or pass --address`);
  process.exit(1);
}
const server = opts.address
  ? undefined
  : await startBenchServer([
      "--model",
      opts.model,
      "--parallel",
      "4",
      "--max-queue",
      "64",
      // Short enough that the slow and idle connections it leaves are closed within the run.
      "--headers-timeout",
      "10",
      "--idle-timeout",
      "20",
    ]);
const address = opts.address ?? `127.0.0.1:${server!.port}`;
let report;
try {
  report = await runFuzz(
    address,
    Number(opts.cases),
    Number(opts.seed),
    (done) => {
      if (done % 500 === 0) process.stderr.write(`${done} cases\n`);
    },
    Number(opts.lingerLimit) * 1000,
  );
} finally {
  await server?.stop();
}
const where = opts.address ?? `started on ${opts.model}`;
writeReport(opts.out, "fuzz", { service: where, ...report }, fuzzMarkdown(report, where));
process.exit(report.hung === 0 && report.serverFaults === 0 && report.goodCallsOk === report.goodCalls ? 0 : 1);
