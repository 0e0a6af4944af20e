/**
 * `npx tsx bench/deadline-margin.ts`: how many Generate calls with a short
 * deadline get their metric trailers (and so their DEADLINE_EXCEEDED from the
 * server rather than from the client's own timer), by `--deadline-margin`,
 * for grpc-js and Python's grpcio. The service runs the tiny model with one
 * slot and a long generation, so every call is ended by its deadline. With
 * `--busy`, a process spinning on one core stands in for a loaded machine.
 * Writes bench/results/deadline-margin.{md,json}.
 *   npx tsx bench/deadline-margin.ts [--margins 0,10,20,30] [--deadlines 20,50,100] [--calls 100] [--busy]
 */
import { spawn } from "node:child_process";
import os from "node:os";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import { pythonStubs, runPython } from "../harness/python-client.js";
import { writeReport } from "./report-files.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("deadline-margin")
  .option("--model <path>", "GGUF model", "models/synthetic/tiny.q4_0.gguf")
  .option("--margins <list>", "values of --deadline-margin to run the service with (ms)", "0,10,20,30")
  .option("--deadlines <list>", "the calls' deadlines (ms)", "20,50,100")
  .option("--calls <n>", "calls per client, margin and deadline", "100")
  .option("--busy", "keep one core busy meanwhile")
  .option("--out <dir>", "results folder", "bench/results")
  .parse()
  .opts<{ model: string; margins: string; deadlines: string; calls: string; busy?: boolean; out: string }>();

const list = (s: string) => s.split(",").map(Number);
const calls = Number(opts.calls);
/** Long enough that no call ends before its deadline. */
const LONG = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 4000 };

async function grpcJs(address: string, deadlineMs: number): Promise<number> {
  const client = new AiravataClient(address);
  try {
    await client.generate({ prompt: "The", raw: true, temperature: 0, maxNewTokens: 2 });
    let withTrailers = 0;
    for (let i = 0; i < calls; i++) {
      const outcome = await client.generate(LONG, undefined, { timeoutMs: deadlineMs });
      if (outcome.trailers["airavata-finish-reason"] !== undefined) withTrailers++;
    }
    return withTrailers;
  } finally {
    client.close();
  }
}

const stubs = pythonStubs();
const busy = opts.busy ? spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }) : undefined;
const rows: { marginMs: number; deadlineMs: number; grpcJs: number; python: number; pythonCodes: Record<string, number> }[] = [];
try {
  for (const marginMs of list(opts.margins)) {
    const server = await startBenchServer([
      "--model",
      opts.model,
      "--parallel",
      "1",
      "--context-size",
      "4096",
      "--deadline-margin",
      String(marginMs),
    ]);
    const address = `127.0.0.1:${server.port}`;
    try {
      for (const deadlineMs of list(opts.deadlines)) {
        const js = await grpcJs(address, deadlineMs);
        const py = await runPython<{ codes: Record<string, number>; withTrailers: number }>(stubs, "deadline_calls.py", [
          address,
          String(deadlineMs),
          String(calls),
        ]);
        rows.push({ marginMs, deadlineMs, grpcJs: js, python: py.withTrailers, pythonCodes: py.codes });
        process.stderr.write(
          `margin ${marginMs} ms, deadline ${deadlineMs} ms: grpc-js ${js}/${calls}, python ${py.withTrailers}/${calls}\n`,
        );
      }
    } finally {
      await server.stop();
    }
  }
} finally {
  busy?.kill();
}

const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}${opts.busy ? ", one core kept busy" : ""}`;
const markdown = [
  "# Deadlines: calls that got their trailers, by --deadline-margin",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- model: ${opts.model}, one slot, ${LONG.maxNewTokens} greedy tokens asked for (every call ends at its deadline)`,
  `- command: npx tsx bench/deadline-margin.ts --margins ${opts.margins} --deadlines ${opts.deadlines} --calls ${calls}${opts.busy ? " --busy" : ""}`,
  `- margin: the larger of --deadline-margin and 10% of the call's time (at most 100 ms), plus the connection's round trip`,
  "",
  "| --deadline-margin ms | deadline ms | grpc-js with trailers | Python grpcio with trailers |",
  "|--:|--:|--:|--:|",
  ...rows.map((r) => `| ${r.marginMs} | ${r.deadlineMs} | ${r.grpcJs}/${calls} | ${r.python}/${calls} |`),
  "",
].join("\n");
writeReport(
  opts.out,
  opts.busy ? "deadline-margin-busy" : "deadline-margin",
  { machine, model: opts.model, calls, rows },
  markdown,
);
