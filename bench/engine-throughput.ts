/**
 * Aggregate greedy tokens/s of the engine in-process (no RPC) at a few
 * concurrency levels, and which node-llama-cpp binary ran it (prebuilt or a
 * local build). One line of JSON. Used by prebuilt-vs-native.sh.
 *   UV_THREADPOOL_SIZE=1 tsx bench/engine-throughput.ts <model> <threads> [levels=1,4,8] [tokens=128]
 */
import { getLlama } from "node-llama-cpp";
import { LlamaEngine } from "../src/engine/llama-engine.js";
import { greedySampling } from "../src/engine/protocol.js";

const [model, threads, levels = "1,4,8", tokens = "128"] = process.argv.slice(2);
const probe = await getLlama({ gpu: false });
const binary = probe.buildType;
await probe.dispose();
const levelList = levels.split(",").map(Number);
const engine = await LlamaEngine.load({
  modelPath: model!,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: Number(tokens) + 64,
  sequences: Math.max(...levelList),
  batchSize: 512,
  batching: "full",
});
const tokensPerSecond: Record<number, number> = {};
for (const c of levelList) {
  const started = performance.now();
  const counts = await Promise.all(
    Array.from({ length: c }, async (_, slot) => {
      let n = 0;
      await engine.generate(
        slot,
        { kind: "chat", messages: [{ role: "user", content: `भारत की राजधानी क्या है? (${slot})` }] },
        greedySampling(Number(tokens)),
        new AbortController().signal,
        { started: () => {}, chunk: (e) => (n += e.tokens.length) },
      );
      return n;
    }),
  );
  tokensPerSecond[c] = Math.round(counts.reduce((a, b) => a + b, 0) / ((performance.now() - started) / 1000));
}
console.log(JSON.stringify({ binary, threads: Number(threads), tokensPerSecond }));
await engine.dispose();
