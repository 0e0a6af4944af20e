/**
 * node-llama-cpp in-process (no RPC), the same LlamaEngine the service's
 * engine process runs: for each concurrency, that many greedy streams at
 * once, each token's arrival time recorded. One JSON line per concurrency.
 *   UV_THREADPOOL_SIZE=1 tsx bench/in-process-traces.ts <model> <threads> <sequences> <contextSize> <tokens> <c1,c2,…> [warm tokens] [flash attention: auto|on|off]
 */
import { LlamaEngine } from "../src/engine/child/llama-engine.js";
import { type FlashAttention, greedySampling } from "../src/generation.js";
import { inProcessTrace, inProcessTraces } from "./in-process.js";
import { warmUp } from "./stream-stats.js";

const [modelPath, threads, sequences, contextSize, tokens, levels, warm = "0", flashAttention = "auto"] = process.argv.slice(2);
const engine = await LlamaEngine.load({
  modelPath: modelPath!,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: Number(contextSize),
  sequences: Number(sequences),
  batchSize: 512,
  batching: "measured",
  flashAttention: flashAttention as FlashAttention,
  // As the bench runs the service and llama-server: every prompt evaluated whole.
  prefixCache: false,
});
// Warm-up, as the service's engine does before it takes calls.
await engine.generate(
  { kind: "raw", text: "नमस्ते" },
  greedySampling(1),
  new AbortController().signal,
  { started: () => {}, chunk: () => {} },
  { cache: false },
);
// Then as many tokens as the bench warms every target with, all sequences at once.
await warmUp(Number(warm), Number(sequences), (i) => inProcessTrace(engine, i, Number(tokens)));
for await (const run of inProcessTraces(engine, levels!.split(",").map(Number), Number(tokens))) {
  console.log(JSON.stringify(run));
}
await engine.dispose();
