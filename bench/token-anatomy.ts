/**
 * Where one stream's time per token goes inside the engine: node-llama-cpp's
 * native decode and sampling calls timed from JavaScript (a Proxy on the
 * context's addon object; the times include the hop to the libuv thread and
 * back), against the interval between tokens. The rest is JavaScript: the
 * engine's decode loop and text stream.
 *   UV_THREADPOOL_SIZE=1 tsx bench/token-anatomy.ts [model] [threads] [rounds] [sequences in the context] [depth]
 * `depth`: a user message of about that many tokens first, to time tokens decoded far into the context.
 */
import { LlamaEngine } from "../src/engine/child/llama-engine.js";
import { greedySampling } from "../src/generation.js";
import { median } from "./stream-stats.js";

const [model = "models/synthetic/small.Q4_K_M.gguf", threads = "1", rounds = "3", sequences = "1", depth = "0"] =
  process.argv.slice(2);
const QUESTION = "भारत की राजधानी क्या है?";
const engine = await LlamaEngine.load({
  modelPath: model,
  gpu: "cpu",
  threads: Number(threads),
  contextSize: 192 + Number(depth),
  sequences: Number(sequences),
  batchSize: 512,
  batching: "full",
});
// The engine's decode loop drives node-llama-cpp's native context object; timing wrappers go around two of its methods.
type Native = Record<string | symbol, unknown>;
const loop = (engine as unknown as { loop: { native: Native } }).loop;
const timed: Record<string, number[]> = { decodeBatch: [], sampleToken: [] };
const native = loop.native;
loop.native = new Proxy(native, {
  get(target, key) {
    const value = target[key];
    if (typeof value !== "function") return value;
    const method = value as (...args: unknown[]) => unknown;
    if (key !== "decodeBatch" && key !== "sampleToken") return method.bind(target);
    return (...args: unknown[]) => {
      const started = performance.now();
      return (method.apply(target, args) as Promise<unknown>).then((result) => {
        timed[key]!.push(performance.now() - started);
        return result;
      });
    };
  },
});
// The question repeated to about `depth` tokens (the chat format adds a few).
const perRepeat = engine.tokenize(` ${QUESTION}`, false).length;
const padded = QUESTION + ` ${QUESTION}`.repeat(Math.max(0, Math.ceil((Number(depth) - perRepeat) / perRepeat)));
for (let round = 0; round < Number(rounds); round++) {
  timed.decodeBatch = [];
  timed.sampleToken = [];
  const arrivals: number[] = [];
  await engine.generate(
    { kind: "chat", messages: [{ role: "user", content: padded }] },
    greedySampling(128),
    new AbortController().signal,
    { started: () => {}, chunk: () => arrivals.push(performance.now()) },
  );
  const interval = median(arrivals.slice(1).map((t, i) => t - arrivals[i]!));
  const decode = median(timed.decodeBatch.slice(1)); // the first decode is the prompt's
  const sample = median(timed.sampleToken);
  console.log(
    `token every ${interval.toFixed(3)} ms: decodeBatch ${decode.toFixed(3)}, sampleToken ${sample.toFixed(3)}, ` +
      `the rest ${(interval - decode - sample).toFixed(3)} (medians, ${threads} thread${threads === "1" ? "" : "s"})`,
  );
}
await engine.dispose();
