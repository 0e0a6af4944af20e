/**
 * What one decode step costs on the engine's native context, by the number of
 * sequences in it, with nothing else: each size's prompts (25 tokens each)
 * decoded together, then `steps` steps of one fixed token per sequence, no
 * sampling. The same work as `llama-batched-bench -npp 25 -ntg <steps> -npl
 * <sizes>`, so the two can be run side by side to compare llama.cpp's decode
 * inside the engine with llama.cpp's own.
 *   UV_THREADPOOL_SIZE=1 tsx bench/decode-steps.ts [model] [threads] [sizes] [steps]
 */
import { LlamaEngine } from "../src/engine/child/llama-engine.js";
import type { NativeContext } from "../src/engine/child/decode-loop.js";
import { median } from "./stream-stats.js";

const [model = "models/synthetic/small.Q4_K_M.gguf", threads = "1", sizesArg = "1,2,4,8", stepsArg = "128"] =
  process.argv.slice(2);
const sizes = sizesArg.split(",").map(Number);
const steps = Number(stepsArg);
const PROMPT = 25;
const engine = await LlamaEngine.load({
  modelPath: model,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: PROMPT + steps + 1,
  sequences: Math.max(...sizes),
  batchSize: 512,
  batching: "full",
});
const native = (engine as unknown as { loop: { native: NativeContext } }).loop.native;
for (const size of sizes) {
  for (let s = 0; s < size; s++) native.removeTokenCellsFromSequence(s, 0, -1);
  native.initBatch(PROMPT * size);
  for (let s = 0; s < size; s++) {
    native.addToBatch(
      s,
      0,
      Uint32Array.from({ length: PROMPT }, (_, i) => 100 + i),
      Uint32Array.of(PROMPT - 1),
    );
  }
  let started = performance.now();
  await native.decodeBatch();
  const promptMs = performance.now() - started;
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    native.initBatch(size);
    for (let s = 0; s < size; s++) native.addToBatch(s, PROMPT + i, Uint32Array.of(200 + i), Uint32Array.of(0));
    started = performance.now();
    await native.decodeBatch();
    times.push(performance.now() - started);
  }
  for (let s = 0; s < size; s++) native.removeTokenCellsFromSequence(s, 0, -1);
  console.log(
    `${size} sequence${size > 1 ? "s" : ""}: prompts ${promptMs.toFixed(1)} ms, a step ${median(times).toFixed(2)} ms ` +
      `(median of ${steps}; ${threads} thread${threads === "1" ? "" : "s"})`,
  );
}
await engine.dispose();
