/**
 * Aggregate greedy tokens/s of the engine in-process (no RPC) at a few
 * concurrency levels, and which node-llama-cpp binary ran it (prebuilt or a
 * local build). One line of JSON. Used by prebuilt-vs-native.sh.
 *   UV_THREADPOOL_SIZE=1 tsx bench/engine-throughput.ts <model> <threads> [levels=1,4,8] [tokens=128]
 */
import { getLlama } from "node-llama-cpp";
import { LlamaEngine } from "../src/engine/child/llama-engine.js";
import { inProcessTraces } from "./in-process.js";
import { summarize } from "./stream-stats.js";

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
for await (const { concurrency, traces } of inProcessTraces(engine, levelList, Number(tokens))) {
  tokensPerSecond[concurrency] = Math.round(summarize([traces]).aggregateTokensPerSecond);
}
console.log(JSON.stringify({ binary, threads: Number(threads), tokensPerSecond }));
await engine.dispose();
