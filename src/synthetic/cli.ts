/**
 * Writes the project's synthetic models. Usage:
 *   tsx src/synthetic/cli.ts [--shape tiny|small|medium|large] [--types f16,q8_0,q4_0] [--out models/synthetic] [--fast]
 * Files are named `<shape>.<type>.gguf`; existing files are kept unless --force.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Command, Option } from "commander";
import { SHAPES, type ShapeName, type WeightType, writeSyntheticModel } from "./model.js";

const program = new Command("make-models")
  .description("write the project's synthetic Llama-architecture GGUF models")
  .addOption(new Option("--shape <shape>", "model shape").choices(Object.keys(SHAPES)).default("tiny"))
  .option("--types <types>", "comma-separated weight types (f32, f16, q8_0, q4_0)", "f16,q8_0,q4_0")
  .option("--out <dir>", "output folder", "models/synthetic")
  .option("--force", "rewrite files that already exist", false)
  .option(
    "--fast",
    "tile the layer weights from one random block (seconds, not minutes, for a 7B shape; the scripted answers stay)",
    false,
  )
  .parse();

const opts = program.opts<{ shape: ShapeName; types: string; out: string; force: boolean; fast: boolean }>();
const types = opts.types.split(",").map((t) => t.trim()) as WeightType[];
for (const t of types) {
  if (!["f32", "f16", "q8_0", "q4_0"].includes(t)) program.error(`unknown weight type "${t}" (f32, f16, q8_0, q4_0)`);
}
mkdirSync(opts.out, { recursive: true });
for (const type of types) {
  const path = join(opts.out, `${opts.shape}.${type}.gguf`);
  if (existsSync(path) && !opts.force) {
    console.log(`${path} exists`);
    continue;
  }
  const started = performance.now();
  const { parameters } = writeSyntheticModel({
    path,
    shape: SHAPES[opts.shape],
    type,
    name: `airavata-synthetic-${opts.shape}`,
    fast: opts.fast,
  });
  const mb = statSync(path).size / 1e6;
  console.log(
    `${path}: ${(parameters / 1e6).toFixed(1)}M parameters, ${mb.toFixed(1)} MB, ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}
