/**
 * Measures a variant on its own, in an engine process of its own: file facts
 * from the GGUF header, load time, memory (node-llama-cpp's estimate), time to
 * first token and decode speed of a greedy generation, and perplexity on a
 * text. The Evaluate RPC and `npm run evaluate` share it.
 */
import { readFileSync } from "node:fs";
import type { Logger } from "pino";
import { ServiceError } from "../errors.js";
import { EngineProcess } from "../engine/engine-process.js";
import { EVERY_TOKEN, greedySampling } from "../generation.js";
import { type EngineOptions } from "../engine/protocol.js";
import type { CatalogEntry } from "./catalog.js";
import type { Evaluation } from "./evaluation-report.js";
import { inspectGguf } from "./gguf-inspect.js";

export const DEFAULT_EVALUATION_TEXT_PATH = new URL("../../data/evaluation.txt", import.meta.url);

export function defaultEvaluationText(): string {
  return readFileSync(DEFAULT_EVALUATION_TEXT_PATH, "utf8");
}

export interface EvaluateOptions {
  text: string;
  maxTokens: number;
  generateTokens: number;
}

const PROMPT = "भारत की राजधानी क्या है? Answer in one paragraph.";

/**
 * Measures `entry`. `reasonNotToLoad`, when it returns a reason, stops before
 * an engine is started (the result then has the header's facts and that error).
 */
export async function evaluateVariant(
  entry: CatalogEntry,
  engineSettings: Pick<EngineOptions, "gpu" | "threads" | "batchSize">,
  options: EvaluateOptions,
  log: Logger,
  reasonNotToLoad?: () => Promise<string | undefined>,
  signal?: AbortSignal,
): Promise<Evaluation> {
  const stopIfCancelled = () => {
    if (signal?.aborted) throw new ServiceError("cancelled", `the evaluation of ${entry.id} was cancelled`);
  };
  stopIfCancelled();
  const summary = await inspectGguf(entry.path);
  const base = {
    variantId: entry.id,
    quantization: summary.usable ? summary.quantization : "",
    fileSizeBytes: summary.fileSize,
    parameterCount: summary.usable ? summary.parameters : 0,
    bitsPerWeight: summary.usable ? summary.bitsPerWeight : 0,
    loadMs: 0,
    ramBytes: 0,
    vramBytes: 0,
    timeToFirstTokenMs: 0,
    decodeTokensPerSecond: 0,
    perplexity: 0,
    scoredTokens: 0,
  };
  if (!summary.usable) return { ...base, error: summary.reason };
  const reason = await reasonNotToLoad?.();
  if (reason) return { ...base, error: reason };
  const contextSize = Math.max(options.maxTokens + 8, options.generateTokens + 64, 256);
  let engine: EngineProcess | undefined;
  // A cancel stops the engine at once, whatever it is doing (starting, decoding, scoring): it is
  // given a moment to exit, then killed; it holds nothing that must outlive the call. Its calls
  // then fail, and the catch below turns that into the cancel.
  const CANCEL_EXIT_MS = 200;
  const onAbort = () => void engine?.dispose(CANCEL_EXIT_MS);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    engine = await EngineProcess.start(
      // Each round's prompt is the same: time to first token must be the whole prompt's; and the
      // decode is timed token by token, whatever the service streams with.
      {
        ...engineSettings,
        modelPath: entry.path,
        sequences: 1,
        contextSize,
        batching: "full",
        prefixCache: false,
        streamInterval: EVERY_TOKEN,
      },
      log,
      undefined,
      signal,
    );
    const needs = await engine.estimate(entry.path);
    await engine.warm();
    const sampling = greedySampling(options.generateTokens);
    const started = performance.now();
    let first = 0;
    let last = 0;
    let tokens = 0;
    for await (const event of engine.generate(
      { kind: "chat", messages: [{ role: "user", content: PROMPT }] },
      sampling,
      signal ?? new AbortController().signal,
    )) {
      if (event.type === "started") continue;
      if (event.tokens.length === 0) continue;
      const now = performance.now();
      if (tokens === 0) first = now;
      last = now;
      tokens += event.tokens.length;
    }
    const { perplexity, scoredTokens } = await engine.perplexity(options.text, options.maxTokens);
    // A cancel that came as the last answer did: the engine's calls all succeeded.
    stopIfCancelled();
    return {
      ...base,
      loadMs: engine.info.loadMs,
      ramBytes: needs.ramBytes,
      vramBytes: needs.vramBytes,
      timeToFirstTokenMs: first - started,
      decodeTokensPerSecond: tokens > 1 && last > first ? (tokens - 1) / ((last - first) / 1000) : 0,
      perplexity,
      scoredTokens,
    };
  } catch (error) {
    stopIfCancelled();
    return { ...base, error: error instanceof Error ? error.message : String(error) };
  } finally {
    signal?.removeEventListener("abort", onAbort);
    await engine?.dispose(signal?.aborted ? CANCEL_EXIT_MS : undefined);
  }
}
