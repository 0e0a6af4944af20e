/**
 * `npm run bench -- --variants a.gguf,b.gguf`: the same load on each variant,
 * in one run and one service process with all of them loaded (`--variants`),
 * every call naming its variant; rounds rotate the order of the variants, so
 * none always runs on a warmer machine. Reports each variant's TTFT, ITL,
 * decode time and tokens/s per concurrency, each over the first variant, and
 * where their greedy texts first differ. Writes <out>/variants.{json,md}.
 */
import { mkdtempSync, symlinkSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { AiravataClient } from "../clients/grpc-client.js";
import { firstDifference } from "../clients/first-difference.js";
import { idForFile } from "../src/variants/catalog.js";
import { inspectGguf } from "../src/variants/gguf-inspect.js";
import { writeReport } from "./report-files.js";
import { serviceTrace, startBenchServer } from "./server-process.js";
import { type RunStats, type StreamTrace, summarize } from "./stream-stats.js";

export interface VariantsOptions {
  files: string[];
  threads: number;
  levels: number[];
  tokens: number;
  rounds: number;
  out: string;
  command: string;
}

const prompt = (i: number) => `भारत की राजधानी क्या है? (${i})`;

export async function variantsScenario(o: VariantsOptions): Promise<void> {
  // The service finds variants in a models folder, by file name: one that holds just these.
  const dir = mkdtempSync(join(os.tmpdir(), "airavata-bench-variants-"));
  const ids = o.files.map((file) => {
    const id = idForFile(file);
    symlinkSync(resolve(file), join(dir, `${id}.gguf`));
    return id;
  });
  if (new Set(ids).size < ids.length) throw new Error(`--variants: two files have the same name (${ids.join(", ")})`);
  const facts = await Promise.all(o.files.map((file) => inspectGguf(file)));
  const slots = Math.max(...o.levels);
  const contextSize = o.tokens + 64;
  const server = await startBenchServer([
    "--models-dir",
    dir,
    "--variants",
    ids.join(","),
    "--gpu",
    "cpu",
    "--threads",
    String(o.threads),
    "--parallel",
    String(slots),
    "--context-size",
    String(contextSize),
    // Every prompt evaluated whole, as each round's prompts repeat.
    "--prefix-cache",
    "off",
  ]);
  const client = new AiravataClient(`127.0.0.1:${server.port}`);
  const collected = new Map<string, Map<number, StreamTrace[][]>>();
  const texts = new Map<string, string>();
  try {
    for (const id of ids) {
      // One call each first: warm, and the variant's greedy text for the comparison.
      const warm = await serviceTrace(client, prompt(0), o.tokens, id);
      if (warm.trailers["airavata-variant"] !== id)
        throw new Error(`a call naming ${id} was served by ${warm.trailers["airavata-variant"]}`);
      texts.set(id, warm.text);
    }
    for (let round = 0; round < o.rounds; round++) {
      const order = ids.map((_, i) => ids[(i + round) % ids.length]!);
      for (const id of order) {
        const series = collected.get(id) ?? new Map<number, StreamTrace[][]>();
        for (const c of o.levels) {
          const traces = await Promise.all(Array.from({ length: c }, (_, i) => serviceTrace(client, prompt(i), o.tokens, id)));
          series.set(c, [...(series.get(c) ?? []), traces]);
        }
        collected.set(id, series);
        process.stderr.write(`round ${round + 1}: ${id} done\n`);
      }
    }
  } finally {
    client.close();
    await server.stop();
  }

  const f = (n: number) => n.toFixed(1);
  const table: { variant: string; concurrency: number; stats: RunStats }[] = [];
  for (const id of ids)
    for (const c of o.levels) table.push({ variant: id, concurrency: c, stats: summarize(collected.get(id)!.get(c)!) });
  const statsOf = (id: string, c: number) => table.find((r) => r.variant === id && r.concurrency === c)!.stats;
  const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const base = ids[0]!;
  const lines = [
    "# Variants side by side",
    "",
    `- date: ${new Date().toISOString()}`,
    `- machine: ${machine}`,
    `- variants (one service process, all loaded; every call names its variant): ${ids
      .map((id, i) => {
        const s = facts[i]!;
        return s.usable
          ? `\`${id}\` (${s.quantization}, ${(s.fileSize / 2 ** 20).toFixed(1)} MiB, ${s.bitsPerWeight.toFixed(2)} bits/weight)`
          : `\`${id}\``;
      })
      .join(", ")}`,
    `- load: ${o.tokens} greedy tokens per stream, ${o.threads} decode thread(s) per engine, ${slots} slots each, ${o.rounds} rounds rotating the order`,
    `- command: \`${o.command}\``,
    "",
    "| variant | streams | TTFT p50/p95 ms | ITL p50/p95 ms | TPOT p50 ms | tok/s per stream | tok/s aggregate | tok/s ÷ first | TTFT ÷ first |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...table.map(({ variant, concurrency: c, stats: s }) => {
      const b = statsOf(base, c);
      return (
        `| ${variant} | ${c} | ${f(s.ttftMs.p50)} / ${f(s.ttftMs.p95)} | ${f(s.interTokenMs.p50)} / ${f(s.interTokenMs.p95)} | ` +
        `${s.timePerOutputTokenMs.p50.toFixed(2)} | ${f(s.perStreamTokensPerSecond)} | ${f(s.aggregateTokensPerSecond)} | ` +
        `${(s.aggregateTokensPerSecond / b.aggregateTokensPerSecond).toFixed(2)} | ${(s.ttftMs.p50 / b.ttftMs.p50).toFixed(2)} |`
      );
    }),
    "",
    `Greedy texts of the prompt "${prompt(0)}" (${o.tokens} tokens):`,
    "",
    ...ids.slice(1).map((id) => {
      const at = firstDifference(texts.get(base)!, texts.get(id)!);
      return at === undefined
        ? `- \`${id}\` gives the same text as \`${base}\``
        : `- \`${id}\` first differs from \`${base}\` at character ${at}`;
    }),
    "",
  ];
  writeReport(
    o.out,
    "variants",
    { machine, command: o.command, variants: ids, table, texts: Object.fromEntries(texts) },
    lines.join("\n"),
  );
}
