/**
 * The model and its context, on node-llama-cpp. Runs inside the engine
 * process: one context with N sequences, one sequence per running request.
 */
import os from "node:os";
import {
  getLlama,
  GgufInsights,
  readGgufFileInfo,
  type Llama,
  type LlamaContext,
  type LlamaModel,
  LlamaLogLevel,
  type Token,
} from "node-llama-cpp";
import { ServiceError } from "../../errors.js";
import { formatAiravataChat } from "./chat-format.js";
import { cudaUnavailableReason } from "../cuda-libraries.js";
import {
  type FinishReason,
  type GenerationInput,
  type GenerationOutcome,
  type GenerationProgress,
  greedySampling,
  type SamplingSettings,
  EVERY_TOKEN,
  type StreamInterval,
} from "../../generation.js";
import { type DeviceMemory, type EngineInfo, type EngineOptions, type MemoryEstimate, PRELOADED_MARK } from "../protocol.js";
import {
  assertNativeContext,
  cheapestGroup,
  DecodeLoop,
  type NativeContext,
  type NativeSampler,
  type SequenceWork,
} from "./decode-loop.js";
import { StreamPacer } from "./stream-pacer.js";
import { type Emission, TextStream } from "./text-stream.js";
import { safeThreadCount, type ThreadDecision, ThreadTuner } from "./thread-tuner.js";

/** The large tokenizer arrays of a GGUF header: not needed to read a model's facts, so skipped. */
export const TOKENIZER_ARRAY_KEYS = [
  "tokenizer.ggml.tokens",
  "tokenizer.ggml.scores",
  "tokenizer.ggml.token_type",
  "tokenizer.ggml.merges",
];

/** Tokens of the prompt and generation considered by the repeat penalty. */
const REPEAT_WINDOW = 64;

/** Decode steps timed for each size at load (after a first one, left out)… */
const MEASURED_STEPS = 10;
/** …or this many, once they add up to STEP_TIMING_MS. */
const MIN_MEASURED_STEPS = 3;
const STEP_TIMING_MS = 1000;

export interface GenerationEvents {
  started(promptTokens: number): void;
  chunk(emission: Emission, progress: GenerationProgress): void;
}

/** node-llama-cpp's internals the engine reaches: the native context and the native sampler's constructor. */
interface NodeLlamaCppInternals {
  context: { _ctx: unknown };
  llama: { _bindings: { AddonSampler: new (model: unknown) => NativeSampler } };
  model: { _model: unknown };
}

/** The native sampler's settings for a request (as node-llama-cpp's own evaluate would set them). */
function samplerConfig(sampling: SamplingSettings): Record<string, unknown> {
  return {
    temperature: sampling.temperature,
    minP: sampling.minP,
    topK: sampling.topK,
    topP: sampling.topP,
    seed: Number.isFinite(sampling.seed) ? Math.max(0, Math.floor(sampling.seed)) : Math.floor(Date.now() / 1000),
  };
}

/** The repeat penalty's part of the sampler settings, over the tokens it punishes. */
function repeatPenaltyConfig(penalty: number, tokens: readonly number[]): Record<string, unknown> {
  return {
    repeatPenalty: penalty,
    repeatPenaltyMaxTokens: REPEAT_WINDOW,
    repeatPenaltyTokens: Uint32Array.from(tokens),
  };
}

export class LlamaEngine {
  private disposed = false;
  private readonly loop: DecodeLoop;
  /**
   * A native sampler per sequence, made at its first generation and kept: a
   * new one allocates and zeroes a candidate array of the whole vocabulary
   * (0.35 ms a request on the synthetic 48k-token model, of a cached chat
   * turn's few milliseconds outside its decode; bench/notes.md). `seed` is
   * the one it was last given.
   */
  private readonly samplers = new Map<number, { sampler: NativeSampler; seed?: unknown }>();

  private constructor(
    private readonly llama: Llama,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    readonly info: EngineInfo,
    private readonly batchSize: number,
    private readonly native: NativeContext,
    private readonly streamInterval: StreamInterval,
  ) {
    this.loop = new DecodeLoop(native, context.batchSize);
  }

  private newSampler(): NativeSampler {
    const { AddonSampler } = (this.llama as unknown as NodeLlamaCppInternals["llama"])._bindings;
    return new AddonSampler((this.model as unknown as NodeLlamaCppInternals["model"])._model);
  }

  /**
   * Sequence `sequenceId`'s sampler, set to `config` as a new sampler would
   * be: the native sampler keeps its random state while the seed it is given
   * stays the same, so a seed it already has is first changed, and the
   * generation's draws start from the seed itself.
   */
  private samplerFor(sequenceId: number, config: Record<string, unknown>): NativeSampler {
    let kept = this.samplers.get(sequenceId);
    if (kept === undefined) this.samplers.set(sequenceId, (kept = { sampler: this.newSampler() }));
    if (kept.seed === config.seed) kept.sampler.applyConfig({ ...config, seed: ((config.seed as number) ^ 1) >>> 0 });
    kept.sampler.applyConfig(config);
    kept.seed = config.seed;
    return kept.sampler;
  }

  /**
   * Loads the model and its context; `onProgress` sees the model load go from
   * 0 to 1, `onThreads` each choice of the thread tuner (threads "auto").
   */
  static async load(
    options: EngineOptions,
    onProgress?: (progress: number) => void,
    onThreads?: (decision: ThreadDecision) => void,
  ): Promise<LlamaEngine> {
    const started = performance.now();
    const cores = os.availableParallelism();
    const auto = options.threads === "auto";
    // With "auto", the safe count first: a core left for the server process (see ThreadTuner).
    const threads = options.threads === "auto" ? safeThreadCount() : options.threads;
    const llama = await getLlama({
      gpu: options.gpu === "cpu" ? false : options.gpu,
      // Prebuilt binaries only: where none loads, node-llama-cpp would otherwise
      // clone and compile llama.cpp inside the service's start, for minutes.
      build: "never",
      logLevel: LlamaLogLevel.error,
      maxThreads: auto ? cores : threads,
    }).catch((error: unknown) => {
      if (options.gpu !== "cuda" && options.gpu !== "vulkan") throw error;
      const reason =
        (options.gpu === "cuda" ? cudaUnavailableReason() : undefined) ?? "its prebuilt binary does not load on this machine";
      throw new Error(
        `--gpu ${options.gpu}: the ${options.gpu === "cuda" ? "CUDA" : "Vulkan"} backend cannot load: ${reason}; --gpu auto runs on the CPU instead`,
        {
          cause: error,
        },
      );
    });
    let model: LlamaModel | undefined;
    try {
      const backend = llama.gpu === false ? "cpu" : llama.gpu;
      // Said in the "model loaded" line: on a GPU machine the CPU is usually a mistake.
      const cpuReason =
        backend !== "cpu"
          ? undefined
          : options.gpu === "cpu"
            ? "--gpu cpu"
            : (cudaUnavailableReason() ?? "no usable GPU backend");
      const sequenceCount = options.sequences === "auto" ? (backend === "cpu" ? 4 : 8) : options.sequences;
      model = await llama.loadModel({ modelPath: options.modelPath, gpuLayers: "auto", onLoadProgress: onProgress });
      const said = watchFlashAttention(llama);
      let flashAttention: boolean | undefined;
      let context: LlamaContext;
      try {
        context = await model.createContext({
          // Per sequence: node-llama-cpp gives each sequence its own `contextSize` cells.
          contextSize: options.contextSize,
          sequences: sequenceCount,
          batchSize: options.batchSize,
          threads,
          flashAttention: ({ auto: "auto", on: true, off: false } as const)[options.flashAttention ?? "auto"],
        });
      } finally {
        // Also when the context fails: llama.cpp's log level goes back to the engine's.
        flashAttention = await said.done();
      }
      const devices = backend === "cpu" ? [os.cpus()[0]?.model ?? "cpu"] : await llama.getGpuDeviceNames();
      const info: EngineInfo = {
        backend,
        devices,
        modelPath: options.modelPath,
        // The configured size, not node-llama-cpp's padded one, bounds a request.
        contextSize: Math.min(options.contextSize, context.contextSize),
        sequences: sequenceCount,
        threads,
        // On a GPU the threads only feed it: nothing to tune.
        threadCandidates: auto && backend === "cpu" && cores > threads ? [threads, cores] : [],
        gpuLayers: model.gpuLayers,
        ...(flashAttention !== undefined ? { flashAttention } : {}),
        // Set by the library itself as it loads (native/persistent-thread-pool.c).
        threadPool: process.env[PRELOADED_MARK] === "1" ? "persistent" : "per-decode",
        ...(cpuReason ? { cpuReason } : {}),
        loadMs: 0,
        stepMs: [],
      };
      const native = (context as unknown as NodeLlamaCppInternals["context"])._ctx;
      assertNativeContext(native);
      const engine = new LlamaEngine(
        llama,
        model,
        context,
        info,
        options.batchSize,
        native,
        options.streamInterval ?? EVERY_TOKEN,
      );
      if (options.batching === "measured" && sequenceCount > 1) {
        const stepMs = await engine.measureSteps();
        engine.loop.groupSize = (ready) => cheapestGroup(stepMs, ready);
        info.stepMs = stepMs;
      }
      engine.loop.prefixCache = options.prefixCache ?? true;
      // libuv reads its pool size when the process starts: the engine process is given one (main.ts).
      engine.loop.sampleBehindDecode = process.env.UV_THREADPOOL_SIZE === "1";
      if (info.threadCandidates.length > 1) {
        const tuner = new ThreadTuner(
          { candidates: info.threadCandidates, start: threads },
          (n) => native.setThreads(n),
          (decision) => {
            info.threads = decision.threads;
            onThreads?.(decision);
          },
        );
        engine.loop.onStep = (size, ms) => tuner.step(size, ms);
      }
      info.loadMs = performance.now() - started;
      return engine;
    } catch (error) {
      await model?.dispose();
      await llama.dispose();
      throw error;
    }
  }

  /**
   * Times a decode step of each size from the sequence count down to 1:
   * that many greedy generations at once, released `size` at a time, the
   * size lowered once it has its samples, so one set of prompts serves every
   * size. A size has its samples at MEASURED_STEPS steps, or at
   * MIN_MEASURED_STEPS once they add up to STEP_TIMING_MS (a 7B on two cores,
   * at 0.3–0.8 s a step, would otherwise spend most of its load here). The
   * median of each size's steps, its first left out. Generations that end
   * early (an end-of-text token) are followed by new ones for the sizes left.
   */
  private async measureSteps(): Promise<number[]> {
    const sequences = this.info.sequences;
    const samples: number[][] = Array.from({ length: sequences + 1 }, () => []);
    const measured = (size: number) => {
      const kept = samples[size]!.slice(1);
      const ms = kept.reduce((a, b) => a + b, 0);
      return kept.length >= MEASURED_STEPS || (kept.length >= MIN_MEASURED_STEPS && ms >= STEP_TIMING_MS);
    };
    let size = sequences;
    let stop = new AbortController();
    this.loop.groupSize = (ready) => Math.min(size, ready);
    this.loop.onStep = (stepSize, ms) => {
      samples[stepSize]!.push(ms);
      while (size > 0 && measured(size)) size--;
      if (size === 0) stop.abort();
    };
    const input: GenerationInput = { kind: "chat", messages: [{ role: "user", content: "नमस्ते" }] };
    const quiet = { started: () => {}, chunk: () => {} };
    // Enough tokens for every size's steps in one pass, however the steps fall.
    const sampling = greedySampling((MEASURED_STEPS + 1) * sequences);
    try {
      for (let pass = 0; pass < sequences && size > 0; pass++) {
        stop = new AbortController();
        await Promise.allSettled(
          Array.from({ length: size }, () => this.generate(input, sampling, stop.signal, quiet, { cache: false })),
        );
      }
    } finally {
      this.loop.onStep = undefined;
      this.loop.groupSize = (ready) => ready;
    }
    // Index = tokens in the step; 0 where a size got no step (generations ended early).
    return samples.map((ms, stepSize) => {
      if (stepSize === 0) return 0;
      const kept = ms.length > 1 ? ms.slice(1).sort((a, b) => a - b) : ms;
      return kept.length === 0 ? 0 : Math.round(kept[Math.floor(kept.length / 2)]! * 100) / 100;
    });
  }

  async memory(): Promise<DeviceMemory> {
    if (this.info.backend === "cpu") return { vramTotal: 0, vramUsed: 0, vramFree: 0 };
    const state = await this.llama.getVramState();
    return { vramTotal: state.total, vramUsed: state.used, vramFree: state.free };
  }

  /**
   * What `modelPath` would need, model and context, with this engine's
   * settings (all layers on the GPU when there is one), by node-llama-cpp's
   * own estimates.
   */
  async estimate(modelPath: string): Promise<MemoryEstimate> {
    let insights: GgufInsights;
    try {
      const info = await readGgufFileInfo(modelPath, { logWarnings: false, ignoreKeys: TOKENIZER_ARRAY_KEYS });
      insights = await GgufInsights.from(info, this.llama);
    } catch (error) {
      throw new ServiceError("failed_precondition", `cannot read ${modelPath}: ${(error as Error).message}`);
    }
    const gpuLayers = this.info.backend === "cpu" ? 0 : insights.totalLayers;
    const model = await insights.estimateModelResourceRequirementsV2({ gpuLayers });
    const context = await insights.estimateContextResourceRequirementsV2({
      contextSize: this.info.contextSize,
      sequences: this.info.sequences,
      batchSize: this.batchSize,
      modelGpuLayers: gpuLayers,
    });
    return { ramBytes: model.cpuRam + context.cpuRam, vramBytes: model.gpuVram + context.gpuVram };
  }

  /**
   * Perplexity of `text` (its first `maxTokens` tokens after BOS) on sequence
   * 0: exp of the mean negative log-probability the model gives each token,
   * from node-llama-cpp's full next-token distributions (temperature 1).
   * The engine must be idle: while a generation runs it is refused
   * (`failed_precondition`), never mixed with one.
   */
  async perplexity(text: string, maxTokens: number): Promise<{ perplexity: number; scoredTokens: number }> {
    if (this.loop.working) {
      throw new ServiceError("failed_precondition", "perplexity needs an idle engine: a generation is running");
    }
    const bos = this.model.tokens.bos;
    const limit = Math.min(maxTokens, this.info.contextSize - 1);
    const tokens = [...(bos === null ? [] : [bos]), ...this.model.tokenize(text, false)].slice(0, limit + 1);
    if (tokens.length < 2) throw new ServiceError("invalid_argument", "the evaluation text has no tokens to score");
    const sampler = this.newSampler();
    sampler.applyConfig({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 0 });
    let nll = 0;
    let next = 0;
    try {
      // Every token but the last goes in with its logits; each position scores the token after it.
      await this.loop.run({
        sequenceId: 0,
        pending: tokens.slice(0, -1),
        position: 0,
        logits: "all",
        afterStep: async (native, indexes) => {
          for (const index of indexes) {
            const [, probabilities = []] = await native.sampleToken(index, sampler, true);
            const wanted = tokens[++next];
            let p = 0;
            for (let i = 0; i + 1 < probabilities.length; i += 2) {
              if (probabilities[i] === wanted) {
                p = probabilities[i + 1]!;
                break;
              }
            }
            nll -= Math.log(Math.max(p, 1e-30));
          }
          return next < tokens.length - 1;
        },
      });
      const scored = tokens.length - 1;
      return { perplexity: Math.exp(nll / scored), scoredTokens: scored };
    } finally {
      sampler.dispose();
    }
  }

  tokenize(text: string, special: boolean): Token[] {
    return this.model.tokenize(text, special);
  }

  /**
   * Generates on a free sequence: with the prefix cache, the one holding the
   * longest prefix of the prompt (see DecodeLoop.choose); `cache: false`
   * neither uses nor leaves cached cells. The signal stops generation after the token
   * being decoded when it fires (during a long prompt: after the batch being
   * decoded), and the sequence is free again on return.
   */
  async generate(
    input: GenerationInput,
    sampling: SamplingSettings,
    signal: AbortSignal,
    events: GenerationEvents,
    options: { cache?: boolean } = {},
  ): Promise<GenerationOutcome> {
    const prompt = this.promptTokens(input);
    // Told first, so that a prompt refused below still reports its token count.
    events.started(prompt.length);
    const limit = this.info.contextSize;
    if (prompt.length + sampling.maxNewTokens > limit) {
      throw new ServiceError(
        "out_of_range",
        `prompt (${prompt.length} tokens) + max_new_tokens (${sampling.maxNewTokens}) = ` +
          `${prompt.length + sampling.maxNewTokens} exceeds the context of ${limit} tokens per request; ` +
          `shorten the prompt or lower max_new_tokens`,
      );
    }
    if (signal.aborted)
      return { text: "", tokens: [], finishReason: "cancelled", generatedTokens: 0, prefillMs: 0, batchSize: 0, cachedTokens: 0 };
    // The server admits no more generations than there are sequences, so one is free.
    const sequenceId = this.loop.choose(prompt, this.info.sequences);
    if (sequenceId === undefined) throw new ServiceError("internal", "no free sequence: more generations than sequences");
    const model = this.model;
    const stream = new TextStream((tokens, last) => model.detokenize(tokens as Token[], false, last as Token[]), sampling.stop);
    const penalized = sampling.repeatPenalty !== 1;
    // The tokens the repeat penalty looks back on: kept only when there is one.
    const history: Token[] = penalized ? [...prompt] : [];
    const started = performance.now();
    let prefillMs = 0;
    let generated = 0;
    let steps = 0;
    let stepSequences = 0;
    let finishReason: FinishReason = "stop";
    const ended = (reason: FinishReason) => {
      finishReason = reason;
      return false;
    };
    // The native sampler takes its whole configuration each time (a setting left out is reset); the
    // settings, and a seed the request leaves out, are the generation's from its start.
    const settings = samplerConfig(sampling);
    const config = () =>
      penalized ? { ...settings, ...repeatPenaltyConfig(sampling.repeatPenalty, history.slice(-REPEAT_WINDOW)) } : settings;
    const sampler = this.samplerFor(sequenceId, config());
    // What the text stream releases leaves in messages paced by the stream interval.
    const pacer = new StreamPacer(this.streamInterval, (emission) =>
      events.chunk(emission, { prefillMs, batchSize: stepSequences / steps, cachedTokens: work.cachedTokens ?? 0 }),
    );
    // What a sampled token means for the generation: false when it ends with this one.
    const take = (token: Token): boolean => {
      if (model.isEogToken(token)) return ended("stop");
      if (generated === 0) prefillMs = performance.now() - started;
      generated++;
      if (penalized) history.push(token);
      pacer.push(stream.push(token));
      if (stream.stopSequence !== undefined) return ended("stop_sequence");
      if (generated >= sampling.maxNewTokens) return ended("length");
      if (signal.aborted) return ended("cancelled");
      // The next step samples with this token in the penalty's window.
      if (penalized) sampler.applyConfig(config());
      return true;
    };
    const work: SequenceWork = {
      sequenceId,
      pending: prompt,
      position: 0,
      logits: "last",
      cache: options.cache ?? true,
      sampler,
      async afterStep(native, indexes, sequences, sampled) {
        // The prompt is still going in, a batch at a time: a cancel takes effect after this batch.
        if (indexes.length === 0) return !signal.aborted || ended("cancelled");
        steps++;
        stepSequences += sequences;
        const token = (await (sampled ?? native.sampleToken(indexes[0]!, sampler))) as Token;
        if (token === -1) throw new Error("node-llama-cpp failed to sample the next token");
        if (!take(token)) return false;
        this.pending = [token];
        return true;
      },
    };
    let held: Emission;
    try {
      await this.loop.run(work);
    } finally {
      // Also on a failure: a timer left armed would send after the generation ended.
      held = pacer.end();
    }
    const rest = stream.end();
    return {
      text: held.text + rest.text,
      tokens: [...held.tokens, ...rest.tokens],
      finishReason,
      generatedTokens: generated,
      prefillMs,
      batchSize: steps > 0 ? stepSequences / steps : 0,
      cachedTokens: work.cachedTokens ?? 0,
    };
  }

  /** KV cells holding tokens (the prefix cache's and work in progress), of all the context's cells. */
  kvCells(): { used: number; total: number } {
    return { used: this.loop.heldTokens, total: this.info.contextSize * this.info.sequences };
  }

  private promptTokens(input: GenerationInput): Token[] {
    const text = input.kind === "raw" ? input.text : formatAiravataChat(input.messages);
    const tokens = this.model.tokenize(text, false);
    const bos = this.model.tokens.bos;
    return bos === null ? tokens : [bos, ...tokens];
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    // node-llama-cpp's context waits for its own decodes before it frees native memory, not for the loop's.
    await this.loop.close(new ServiceError("unavailable", "the engine is shutting down"));
    for (const { sampler } of this.samplers.values()) sampler.dispose();
    this.samplers.clear();
    await this.context.dispose();
    await this.model.dispose();
    await this.llama.dispose();
  }
}

let watched = false;

/**
 * Listens to llama.cpp's load messages (info level, while the context is
 * created) for whether it runs flash attention: with "auto" llama.cpp decides
 * by the backend, and node-llama-cpp does not report the outcome. The
 * engine's logger keeps getting only what its own level lets through, also
 * for lines that arrive late (they cross from llama.cpp's thread).
 */
function watchFlashAttention(llama: Llama): { done(): Promise<boolean | undefined> } {
  // Only the process's first Llama: node-llama-cpp sends a later one's native messages past its logger
  // (printed as they come, seen with a second engine loaded after the first was disposed). An engine
  // process loads one model; in-process benches load more and are told nothing.
  if (watched) return { done: () => Promise.resolve(undefined) };
  watched = true;
  const { logger, logLevel } = llama;
  const passes = new Set([LlamaLogLevel.fatal, LlamaLogLevel.error]);
  let enabled: boolean | undefined;
  llama.logLevel = LlamaLogLevel.info;
  llama.logger = (level, message) => {
    // "flash_attn = enabled|disabled|auto" as the context starts; with auto, "Flash Attention enabled" or "… not supported" once resolved.
    const stated = /flash_attn\s*=\s*(enabled|disabled)/.exec(message)?.[1];
    if (stated !== undefined) enabled = stated === "enabled";
    if (/Flash Attention enabled/.test(message)) enabled = true;
    if (/Flash Attention not supported/.test(message)) enabled = false;
    if (passes.has(level)) logger(level, message);
  };
  return {
    async done() {
      // The lines said during the creation are queued for this thread: let them in first.
      await new Promise((resolve) => setImmediate(resolve));
      llama.logLevel = logLevel;
      return enabled;
    },
  };
}
