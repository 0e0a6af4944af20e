/**
 * Swap time against cold load time, for the same variants: a server process
 * started on variant A (cold: spawn → health SERVING), then SwapVariant A → B
 * → A timed from the request to SWITCHED and to DONE, and a server started
 * cold on B. Writes bench/results/swap-time.{md,json}.
 *   tsx bench/swap-time.ts [--models-dir models/synthetic] [--a small.q4_0] [--b small.q8_0] [--rounds 2]
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Command } from "commander";
import { AdminClient } from "../clients/grpc-client.js";
import { SwapPhase } from "../src/gen/airavata/v1/admin_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/grpc/health/v1/health_pb.js";

const opts = new Command("swap-time")
  .option("--models-dir <dir>", "models folder", "models/synthetic")
  .option("--a <id>", "first variant", "small.q4_0")
  .option("--b <id>", "second variant", "small.q8_0")
  .option("--rounds <n>", "swap round trips", "2")
  .parse()
  .opts<{ modelsDir: string; a: string; b: string; rounds: string }>();
const TOKEN = "swap-time-bench-token-0123456789";

async function startServer(variant: string) {
  const started = performance.now();
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "src/main.ts", "--models-dir", opts.modelsDir, "--variant", variant, "--port", "0", "--gpu", "cpu"],
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, AIRAVATA_ADMIN_TOKEN: TOKEN } },
  );
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as { msg: string; port?: number };
      if (entry.msg === "listening") resolve(entry.port!);
    });
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
  for await (const { status } of health.watch({ service: "" })) if (status === Status.SERVING) break;
  const coldMs = performance.now() - started;
  return { child, port, coldMs };
}

async function stop(child: ReturnType<typeof spawn>) {
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
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
await stop(first.child);
for (const variant of [opts.b, opts.a]) {
  const s = await startServer(variant);
  cold[variant]!.push(s.coldMs);
  process.stderr.write(`cold start on ${variant}: ${s.coldMs.toFixed(0)} ms\n`);
  await stop(s.child);
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
  "- cold start: server process spawned → health SERVING (includes starting Node and the engine process, loading, warming)",
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
