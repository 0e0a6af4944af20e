/**
 * `npm run quantize -- models/airavata.f16.gguf q4_k_m q5_k_m q8_0`: new
 * variants from an F16/F32 GGUF, with llama.cpp's own quantizer (built once
 * from the source node-llama-cpp carries; see llama-tools.ts). Each output
 * appears under its final name only when complete.
 */
import { spawn } from "node:child_process";
import { existsSync, renameSync, rmSync } from "node:fs";
import os from "node:os";
import { basename, dirname, join } from "node:path";
import { Command } from "commander";
import { inspectGguf } from "../variants/gguf-inspect.js";
import { ensureLlamaTool } from "./llama-tools.js";

/** The types llama-quantize takes by name. */
export const QUANT_TYPES = [
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q8_0",
  "Q2_K",
  "Q3_K_S",
  "Q3_K_M",
  "Q3_K_L",
  "Q4_K_S",
  "Q4_K_M",
  "Q5_K_S",
  "Q5_K_M",
  "Q6_K",
  "F16",
  "BF16",
] as const;

/** "models/airavata.f16.gguf" + "Q4_K_M" → "models/airavata.Q4_K_M.gguf". */
export function outputPath(input: string, type: string, outDir?: string): string {
  const stem = basename(input)
    .replace(/\.gguf$/i, "")
    .replace(/[._-](f32|f16|bf16)$/i, "");
  return join(outDir ?? dirname(input), `${stem}.${type}.gguf`);
}

export async function quantize(input: string, type: string, output: string, onProgress: (line: string) => void): Promise<void> {
  const tool = await ensureLlamaTool("llama-quantize", { onProgress });
  const partial = `${output}.part`;
  await new Promise<void>((resolve, reject) => {
    const child = spawn(tool, [input, partial, type, String(os.availableParallelism())], { stdio: ["ignore", "pipe", "pipe"] });
    let tail = "";
    const onData = (data: Buffer) => {
      const text = data.toString();
      tail = (tail + text).slice(-3000);
      for (const line of text.split("\n")) {
        const m = /^\[\s*(\d+)\/\s*(\d+)\]\s+(\S+)/.exec(line.trim());
        if (m) onProgress(`${type}: ${Math.round((100 * Number(m[1])) / Number(m[2]))}% (${m[3]})`);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code === 0) return resolve();
      rmSync(partial, { force: true });
      reject(new Error(`llama-quantize failed (exit ${code}):\n${tail}`));
    });
  });
  renameSync(partial, output);
}

const isMain = process.argv[1] && import.meta.url.endsWith(basename(process.argv[1]));
if (isMain) {
  const program = new Command("quantize")
    .description("make quantized variants of an F16/F32 GGUF with llama.cpp's quantizer")
    .argument("<input>", "an F16 or F32 GGUF file")
    .argument("<types...>", `target types: ${QUANT_TYPES.join(", ").toLowerCase()}`)
    .option("--out-dir <dir>", "where the variants go (default: beside the input)")
    .option("--force", "overwrite outputs that exist")
    .parse();
  const [input, ...typeArgs] = program.args as [string, ...string[]];
  const opts = program.opts<{ outDir?: string; force?: boolean }>();
  const types = typeArgs.map((t) => t.toUpperCase());
  for (const t of types) {
    if (!(QUANT_TYPES as readonly string[]).includes(t))
      program.error(`error: unknown type "${t.toLowerCase()}"; use one of ${QUANT_TYPES.join(", ").toLowerCase()}`);
  }
  const source = await inspectGguf(input);
  if (!source.usable) {
    console.error(`error: ${input}: ${source.reason}`);
    process.exit(2);
  }
  if (!["F16", "F32", "BF16"].includes(source.quantization)) {
    console.warn(
      `warning: ${input} is already ${source.quantization}; quantizing it again loses more quality than starting from F16`,
    );
  }
  let failed = false;
  for (const type of types) {
    const output = outputPath(input, type, opts.outDir);
    if (existsSync(output) && !opts.force) {
      console.log(`${output} exists (--force to rewrite)`);
      continue;
    }
    try {
      let last = "";
      await quantize(input, type, output, (line) => {
        if (line !== last) console.log(line);
        last = line;
      });
      const made = await inspectGguf(output);
      console.log(
        made.usable
          ? `${output}: ${made.quantization}, ${(made.fileSize / 1e6).toFixed(1)} MB, ${made.bitsPerWeight.toFixed(2)} bits per weight`
          : `${output}: written, but unusable: ${made.reason}`,
      );
    } catch (error) {
      failed = true;
      console.error(`${type}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  process.exit(failed ? 1 : 0);
}
