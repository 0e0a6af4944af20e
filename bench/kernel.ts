/**
 * llama.cpp's decode kernel with nothing around it, as the bench's reference:
 * `llama-batched-bench`, built from the llama.cpp source node-llama-cpp
 * carries and running the engine's own prebuilt CPU kernels, on the same GGUF
 * with the same threads. For each concurrency it
 * decodes that many prompts of the bench's prompt length in one batch, then
 * one token per sequence per step: no server, no sampling, no detokenizing.
 * A server doing the same work on these kernels can approach this speed, not
 * pass it.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { formatAiravataChat } from "../src/engine/child/chat-format.js";
import type { FlashAttention } from "../src/generation.js";
import { ensureLlamaTool } from "../src/quantize/llama-tools.js";

const exec = promisify(execFile);

/** The llama-batched-bench binary, built on first use; `undefined` with the reason logged when it cannot be built here. */
export async function kernelBinary(log: (line: string) => void): Promise<string | undefined> {
  try {
    return await ensureLlamaTool("llama-batched-bench", {
      onProgress: (line) => {
        if (!line.startsWith("[")) log(line);
      },
    });
  } catch (error) {
    log(`the kernel reference (llama-batched-bench) is skipped: ${(error as Error).message}`);
    return undefined;
  }
}

/** Tokens in a chat-formatted prompt, BOS included, as the engine feeds it. */
export async function promptTokenCount(model: string, content: string): Promise<number> {
  const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
  try {
    const vocab = await llama.loadModel({ modelPath: model, vocabOnly: true });
    const tokens = vocab.tokenize(formatAiravataChat([{ role: "user", content }]), false);
    const count = tokens.length + (vocab.tokens.bos === null ? 0 : 1);
    await vocab.dispose();
    return count;
  } finally {
    await llama.dispose();
  }
}

export interface KernelRun {
  model: string;
  threads: number;
  promptTokens: number;
  /** Tokens each stream gets. */
  tokens: number;
  levels: number[];
  /** KV cells for the whole context (streams × tokens per stream, as llama-server gets). */
  contextCells: number;
  /** Layers on the GPU (0, the default: the CPU bench). */
  gpuLayers?: number;
  /** Its environment (the GPU run adds where cuBLAS is). */
  env?: NodeJS.ProcessEnv;
  /** `-fa`; unset: the tool's own default (auto). */
  flashAttention?: FlashAttention;
}

/** One llama-batched-bench run of `run`'s levels: output tokens/s by concurrency (see `kernelSpeeds`). */
export async function kernelRound(binary: string, run: KernelRun): Promise<Map<number, number>> {
  const { stdout } = await exec(
    binary,
    [
      ["-m", run.model],
      ["-t", String(run.threads)],
      ["-tb", String(run.threads)],
      ["-c", String(run.contextCells)],
      ["-ngl", String(run.gpuLayers ?? 0)],
      ["-npp", String(run.promptTokens)],
      ["-ntg", String(run.tokens)],
      ["-npl", run.levels.join(",")],
      ["--output-format", "jsonl"],
      run.flashAttention ? ["-fa", run.flashAttention] : [],
    ].flat(),
    { maxBuffer: 16 * 2 ** 20, env: run.env },
  );
  return kernelSpeeds(stdout, run.levels);
}

/**
 * Output tokens/s by concurrency from `llama-batched-bench --output-format
 * jsonl`, counted as the bench counts a server's: the prompt's decode gives
 * each stream its first token and `tokens − 1` steps the rest, so of the
 * `tokens` steps llama-batched-bench times after the prompt, one is taken off.
 */
export function kernelSpeeds(jsonl: string, levels: readonly number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of jsonl.split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line) as { pl: number; tg: number; t_pp: number; t_tg: number };
    out.set(r.pl, (r.pl * r.tg) / (r.t_pp + (r.t_tg * (r.tg - 1)) / r.tg));
  }
  for (const c of levels) if (!out.has(c)) throw new Error(`llama-batched-bench gave no result for ${c} streams`);
  return out;
}
