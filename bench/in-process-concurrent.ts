/**
 * node-llama-cpp in-process with N concurrent greedy streams on N sequences:
 * aggregate and per-stream tokens/s. The lower bound for the service under load.
 *   UV_THREADPOOL_SIZE=1 tsx bench/in-process-concurrent.ts <model> <threads> <streams> <tokens> [runs]
 * Prints one JSON line per run.
 */
import { LlamaEngine } from "../src/engine/llama-engine.js";

const [modelPath, threads, streams, tokens, runs = "3"] = process.argv.slice(2);
const n = Number(streams);
const engine = await LlamaEngine.load({ modelPath: modelPath!, gpu: "cpu", threads: Number(threads), contextSize: 1024, sequences: n, batchSize: 512 });
const sampling = { maxNewTokens: Number(tokens), temperature: 0, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1, seed: 1, stop: [] };
for (let run = 0; run < Number(runs); run++) {
  const started = performance.now();
  const perStream = await Promise.all(
    Array.from({ length: n }, async (_, slot) => {
      let first = 0;
      let last = 0;
      let count = 0;
      await engine.generate(slot, { kind: "chat", messages: [{ role: "user", content: `भारत ${slot}` }] }, sampling, new AbortController().signal, {
        started: () => {},
        chunk: (e) => {
          const now = performance.now();
          if (count === 0) first = now;
          last = now;
          count += e.tokens.length;
        },
      });
      return { count, first, last };
    }),
  );
  const end = Math.max(...perStream.map((s) => s.last));
  const total = perStream.reduce((a, s) => a + s.count, 0);
  console.log(
    JSON.stringify({
      streams: n,
      aggregateTokensPerSecond: total / ((end - started) / 1000),
      perStreamDecodeTokensPerSecond: perStream.map((s) => (s.count - 1) / ((s.last - s.first) / 1000)),
    }),
  );
}
await engine.dispose();
