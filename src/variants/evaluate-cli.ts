/**
 * `npm run evaluate -- [ids…]`: every downloaded variant (or those named)
 * measured side by side on this machine, written to bench/results as
 * markdown, JSON and an SVG chart. Runs without a server.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import { safeThreadCount } from "../engine/child/thread-tuner.js";
import { Catalog } from "./catalog.js";
import { defaultEvaluationText, evaluateVariant } from "./evaluate.js";
import { type Evaluation, evaluationMarkdown, evaluationSvg } from "./evaluation-report.js";

const int = (value: string) => {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected a whole number.");
  return Number(value);
};

const program = new Command("evaluate")
  .description("measure variants side by side: size, bits per weight, load time, memory, TTFT, decode speed, perplexity")
  .argument("[ids...]", "catalog ids (default: every downloaded, usable variant)")
  .option("--models-dir <dir>", "models folder (env AIRAVATA_MODELS_DIR)", process.env.AIRAVATA_MODELS_DIR || "models")
  .option("--manifest <path>", "manifest of extra variants (env AIRAVATA_MANIFEST)", process.env.AIRAVATA_MANIFEST || undefined)
  .option("--text <file>", "text for perplexity (default: data/evaluation.txt)")
  .option("--max-tokens <n>", "tokens of the text scored", int, 512)
  .option("--generate-tokens <n>", "tokens generated to time decoding", int, 64)
  .option("--threads <n>", "CPU threads", int, safeThreadCount())
  .addOption(new Option("--gpu <backend>", "compute backend").choices(["auto", "cuda", "vulkan", "cpu"]).default("auto"))
  .option("--out <dir>", "where the results go", "bench/results")
  .parse();

const o = program.opts<{
  modelsDir: string;
  manifest?: string;
  text?: string;
  maxTokens: number;
  generateTokens: number;
  threads: number;
  gpu: "auto" | "cuda" | "vulkan" | "cpu";
  out: string;
}>();
const catalog = await Catalog.load({ modelsDir: o.modelsDir, manifestPath: o.manifest });
const entries = await catalog.select(program.args);
if (entries.length === 0) {
  console.error(`no downloaded variant in ${o.modelsDir}: npm run pull -- q4_k_m, or npm run models for the synthetic ones`);
  process.exit(1);
}
const text = o.text ? readFileSync(o.text, "utf8") : defaultEvaluationText();
const log = pino({ level: "warn" });
const results: Evaluation[] = [];
for (const entry of entries) {
  process.stderr.write(`evaluating ${entry.id}…\n`);
  results.push(
    await evaluateVariant(
      entry,
      { gpu: o.gpu, threads: o.threads, batchSize: 512 },
      { text, maxTokens: o.maxTokens, generateTokens: o.generateTokens },
      log,
    ),
  );
}
const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${o.threads} threads, --gpu ${o.gpu}`;
const command = `npm run evaluate -- ${process.argv.slice(2).join(" ")}`.trim();
mkdirSync(o.out, { recursive: true });
const table = evaluationMarkdown(results);
writeFileSync(
  join(o.out, "evaluate.json"),
  `${JSON.stringify({ date: new Date().toISOString(), machine, command, results }, null, 2)}\n`,
);
writeFileSync(
  join(o.out, "evaluate.md"),
  `# Variants side by side\n\n- date: ${new Date().toISOString()}\n- machine: ${machine}\n- command: \`${command}\`\n` +
    `- perplexity: first ${o.maxTokens} tokens of ${o.text ?? "data/evaluation.txt"}; speed: ${o.generateTokens} greedy tokens\n\n${table}\n`,
);
writeFileSync(join(o.out, "evaluate.svg"), evaluationSvg(results));
console.log(table);
console.log(`\nwritten: ${join(o.out, "evaluate.md")}, evaluate.json, evaluate.svg`);
