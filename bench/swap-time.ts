/**
 * Swap time against cold load time, for the same variants: a server process
 * started on variant A (cold: spawn → serving), then SwapVariant A → B
 * → A timed from the request to SWITCHED and to DONE, and a server started
 * cold on B. Writes bench/results/swap-time.{md,json}.
 *   tsx bench/swap-time.ts [--models-dir models/synthetic] [--a small.q4_0] [--b small.q8_0] [--rounds 2]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { Command } from "commander";
import { AdminClient } from "../clients/grpc-client.js";
import { SwapPhase } from "../src/gen/airavata/v1/admin_pb.js";
import { startBenchServer } from "./server-process.js";

const opts = new Command("swap-time")
  .option("--models-dir <dir>", "models folder", "models/synthetic")
  .option("--a <id>", "first variant", "small.q4_0")
  .option("--b <id>", "second variant", "small.q8_0")
  .option("--rounds <n>", "swap round trips", "2")
  .parse()
  .opts<{ modelsDir: string; a: string; b: string; rounds: string }>();
const TOKEN = "swap-time-bench-token-0123456789";

/** A server on `variant`, and how long it took from spawn to serving (health turns SERVING just before the "model loaded" log line it waits for). */
async function startServer(variant: string) {
  const started = performance.now();
  const server = await startBenchServer(["--models-dir", opts.modelsDir, "--variant", variant, "--gpu", "cpu"], {
    AIRAVATA_ADMIN_TOKEN: TOKEN,
  });
  return { ...server, coldMs: performance.now() - started };
}

const cold: Record<string, number[]> = { [opts.a]: [], [opts.b]: [] };
const swaps: { to: string; switchedMs: number; doneMs: number }[] = [];
const first = await startServer(opts.a);
cold[opts.a]!.push(first.coldMs);
const admin = new AdminClient(`127.0.0.1:${first.port}`, TOKEN);
for (let round = 0; round < Number(opts.rounds); round++) {
  for (const to of [opts.b, opts.a]) {
    let switchedMs = 0;
    let doneMs = 0;
    const outcome = await admin.swapVariant({ variantId: to }, (p) => {
      if (p.phase === SwapPhase.SWITCHED) switchedMs = p.elapsedMs;
      if (p.phase === SwapPhase.DONE) doneMs = p.elapsedMs;
    });
    if (outcome.codeName !== "OK") throw new Error(`swap to ${to}: ${outcome.codeName} ${outcome.message}`);
    swaps.push({ to, switchedMs, doneMs });
    process.stderr.write(`swap to ${to}: switched after ${switchedMs.toFixed(0)} ms, done after ${doneMs.toFixed(0)} ms\n`);
  }
}
admin.close();
await first.stop();
for (const variant of [opts.b, opts.a]) {
  const s = await startServer(variant);
  cold[variant]!.push(s.coldMs);
  process.stderr.write(`cold start on ${variant}: ${s.coldMs.toFixed(0)} ms\n`);
  await s.stop();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const rows = [opts.a, opts.b].map((v) => {
  const to = swaps.filter((s) => s.to === v);
  return {
    variant: v,
    coldStartMs: median(cold[v]!),
    swapToSwitchedMs: median(to.map((s) => s.switchedMs)),
    swapToDoneMs: median(to.map((s) => s.doneMs)),
  };
});
const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
const command = `tsx bench/swap-time.ts --models-dir ${opts.modelsDir} --a ${opts.a} --b ${opts.b} --rounds ${opts.rounds}`;
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/swap-time.json",
  `${JSON.stringify({ date: new Date().toISOString(), machine, command, rows, swaps, cold }, null, 2)}\n`,
);
const md = [
  "# Swap time against cold load time",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${machine}`,
  `- command: \`${command}\``,
  "- cold start: server process spawned → serving (includes starting Node and the engine process, loading, warming)",
  "- swap: SwapVariant request → SWITCHED (new calls go to the new variant) and → DONE (old one released); no load running",
  "",
  "| variant | cold start ms | swap to it: request → switched ms | request → done ms |",
  "|---|---:|---:|---:|",
  ...rows.map(
    (r) => `| ${r.variant} | ${r.coldStartMs.toFixed(0)} | ${r.swapToSwitchedMs.toFixed(0)} | ${r.swapToDoneMs.toFixed(0)} |`,
  ),
  "",
].join("\n");
writeFileSync("bench/results/swap-time.md", md);
console.log(md);
