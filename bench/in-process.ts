/**
 * node-llama-cpp in-process (no RPC): for each concurrency level, that many
 * greedy streams at once on the engine, each token's arrival time recorded.
 * Shared by the in-process bench target and the binary comparison.
 */
import type { LlamaEngine } from "../src/engine/child/llama-engine.js";
import type { StreamTrace } from "./stream-stats.js";

/** The sampling the service's bench calls ask for (temperature 0: greedy). */
const SAMPLING = { temperature: 0, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1, seed: 1, stop: [] };

/** One greedy stream i on the engine, each token's arrival time recorded. */
export async function inProcessTrace(engine: LlamaEngine, i: number, tokens: number): Promise<StreamTrace> {
  const trace: StreamTrace = { sentAt: performance.now(), tokenTimes: [] };
  await engine.generate(
    { kind: "chat", messages: [{ role: "user", content: `भारत की राजधानी क्या है? (${i})` }] },
    { ...SAMPLING, maxNewTokens: tokens },
    new AbortController().signal,
    {
      started: () => {},
      chunk: (e) => {
        const now = performance.now();
        for (let k = 0; k < e.tokens.length; k++) trace.tokenTimes.push(now);
      },
    },
  );
  return trace;
}

export async function* inProcessTraces(
  engine: LlamaEngine,
  levels: readonly number[],
  tokens: number,
): AsyncGenerator<{ concurrency: number; traces: StreamTrace[] }> {
  for (const concurrency of levels) {
    const traces = await Promise.all(Array.from({ length: concurrency }, (_, i) => inProcessTrace(engine, i, tokens)));
    yield { concurrency, traces };
  }
}
