/**
 * node-llama-cpp called in-process, with the settings the service uses (its
 * context, sequences, threads, greedy sampling, the chat format). The lower
 * bound for what the service can add. Prints one JSON line per run.
 * Run with UV_THREADPOOL_SIZE=1, as the service's engine process is.
 *   tsx bench/in-process.ts <model> <threads> <runs> <maxNewTokens> <sequences> <contextSize>
 */
import { LlamaEngine } from "../src/engine/llama-engine.js";

const [modelPath, threads, runs, maxNewTokens, sequences, contextSize] = process.argv.slice(2);
const engine = await LlamaEngine.load({
  modelPath: modelPath!,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: Number(contextSize),
  sequences: Number(sequences),
  batchSize: 512,
});
for (let run = 0; run < Number(runs); run++) {
  const started = performance.now();
  let first = 0;
  let last = 0;
  let tokens = 0;
  await engine.generate(
    0,
    { kind: "chat", messages: [{ role: "user", content: "भारत की राजधानी क्या है?" }] },
    { maxNewTokens: Number(maxNewTokens), temperature: 0, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1, seed: 1, stop: [] },
    new AbortController().signal,
    {
      started: () => {},
      chunk: (e) => {
        const now = performance.now();
        if (tokens === 0) first = now;
        last = now;
        tokens += e.tokens.length;
      },
    },
  );
  console.log(JSON.stringify({ ttftMs: first - started, decodeTokensPerSecond: (tokens - 1) / ((last - first) / 1000), tokens }));
}
await engine.dispose();
