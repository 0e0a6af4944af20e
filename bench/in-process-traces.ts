/**
 * node-llama-cpp in-process (no RPC), the same LlamaEngine the service's
 * engine process runs: for each concurrency, that many greedy streams at
 * once, each token's arrival time recorded. One JSON line per concurrency.
 *   UV_THREADPOOL_SIZE=1 tsx bench/in-process-traces.ts <model> <threads> <sequences> <contextSize> <tokens> <c1,c2,…>
 */
import { LlamaEngine } from "../src/engine/llama-engine.js";
import type { StreamTrace } from "./stream-stats.js";

const [modelPath, threads, sequences, contextSize, tokens, levels] = process.argv.slice(2);
const engine = await LlamaEngine.load({
  modelPath: modelPath!,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: Number(contextSize),
  sequences: Number(sequences),
  batchSize: 512,
  batching: "measured",
});
const sampling = {
  maxNewTokens: Number(tokens),
  temperature: 0,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1,
  seed: 1,
  stop: [],
};
// Warm-up, as the service's engine does before it takes calls.
await engine.generate(0, { kind: "raw", text: "नमस्ते" }, { ...sampling, maxNewTokens: 1 }, new AbortController().signal, {
  started: () => {},
  chunk: () => {},
});
for (const c of levels!.split(",").map(Number)) {
  const traces = await Promise.all(
    Array.from({ length: c }, async (_, i): Promise<StreamTrace> => {
      const trace: StreamTrace = { sentAt: performance.now(), tokenTimes: [] };
      await engine.generate(
        i,
        { kind: "chat", messages: [{ role: "user", content: `भारत की राजधानी क्या है? (${i})` }] },
        sampling,
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
    }),
  );
  console.log(JSON.stringify({ concurrency: c, traces }));
}
await engine.dispose();
