/**
 * What choosing a slot for a prompt costs with the prefix cache on: the decode
 * loop compares the prompt with each free slot's held tokens until they
 * differ (`commonPrefix`, as `DecodeLoop.choose` calls it). Timed for a prompt
 * that shares nothing with any slot (a miss) and one that shares every held
 * token with every slot (the worst case), per request over all slots.
 *   npx tsx bench/slot-choice.ts [--slots 4] [--tokens 2048] [--requests 20000]
 */
import os from "node:os";
import { Command } from "commander";
import { commonPrefix } from "../src/engine/child/decode-loop.js";
import { writeReport } from "./report-files.js";

const opts = new Command()
  .option("--slots <n>", "free slots holding tokens", "4")
  .option("--tokens <n>", "tokens each slot holds (and the prompt's length)", "2048")
  .option("--requests <n>", "requests timed per case", "20000")
  .option("--out <dir>", "results folder", "bench/results/slot-choice")
  .parse()
  .opts<{ slots: string; tokens: string; requests: string; out: string }>();
const slots = Number(opts.slots);
const tokens = Number(opts.tokens);
const requests = Number(opts.requests);

const prompt = Array.from({ length: tokens }, (_, i) => (i * 7919) % 48_000);
const held = Array.from({ length: slots }, () => prompt.slice());
const cases = { "shares nothing (a miss)": prompt.map((t) => t + 1), "shares every token (worst case)": prompt };

function perRequestUs(p: readonly number[], n: number): number {
  let sink = 0;
  const start = process.hrtime.bigint();
  for (let r = 0; r < n; r++) for (const h of held) sink += commonPrefix(h, p);
  const us = Number(process.hrtime.bigint() - start) / n / 1000;
  if (sink < 0) throw new Error("unreachable");
  return us;
}

const results: Record<string, number> = {};
for (const [name, p] of Object.entries(cases)) {
  perRequestUs(p, Math.ceil(requests / 10)); // warm-up: let V8 compile the loop
  results[name] = perRequestUs(p, requests);
}
const lines = [
  "# Choosing a slot with the prefix cache: the prompt compared with each slot's tokens",
  "",
  `- date: ${new Date().toISOString()}`,
  `- machine: ${os.cpus()[0]?.model.trim()}, ${os.availableParallelism()} cores, Node ${process.version}`,
  `- ${slots} free slots of ${tokens} held tokens, a ${tokens}-token prompt, ${requests} requests a case`,
  `- command: \`npx tsx bench/slot-choice.ts --slots ${slots} --tokens ${tokens} --requests ${requests}\``,
  "",
  "| prompt | µs per request |",
  "|---|---:|",
  ...Object.entries(results).map(([name, us]) => `| ${name} | ${us.toFixed(1)} |`),
];
writeReport(opts.out, "slot-choice", { slots, tokens, requests, results }, `${lines.join("\n")}\n`);
