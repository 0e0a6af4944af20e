/**
 * The messages between the server process and an engine process. The server
 * keeps the protocol, queue and metrics; the engine keeps the model, the
 * context and its sequences. Messages go over Node's IPC channel as JSON.
 */
import type { ErrorKind } from "../errors.js";
import type { ThreadDecision } from "./child/thread-tuner.js";
import type {
  FlashAttention,
  GenerationInput,
  GenerationOutcome,
  GenerationProgress,
  SamplingSettings,
  StreamInterval,
  ThreadPool,
} from "../generation.js";

/** The variable the thread pool library sets as it loads in the engine process, so the engine can tell it is in place. */
export const PRELOADED_MARK = "AIRAVATA_THREAD_POOL_PRELOADED";

export interface EngineInfo {
  backend: "cuda" | "vulkan" | "metal" | "cpu";
  /** GPU names, or the CPU's description. */
  devices: string[];
  modelPath: string;
  /** Tokens one sequence can hold. */
  contextSize: number;
  sequences: number;
  /** Decode threads now (with "auto", the tuner's latest choice). */
  threads: number;
  /** The counts the tuner chooses from while serving ("auto" on the CPU); empty when the count is fixed. */
  threadCandidates: number[];
  gpuLayers: number;
  /**
   * Whether llama.cpp runs flash attention for this context, as it said at
   * load (with "auto" it decides); undefined if it did not say.
   */
  flashAttention?: boolean;
  /**
   * How ggml's decode threads live: "persistent" where the engine runs with
   * the thread pool library preloaded (a pool is attached while a context
   * decodes on more than one thread), else "per-decode".
   */
  threadPool: ThreadPool;
  /** With "per-decode", why: the setting, or what kept the library from being built. */
  threadPoolReason?: string;
  /** On the CPU backend, why: "--gpu cpu", or what keeps the GPU backend from loading. */
  cpuReason?: string;
  loadMs: number;
  /** Measured ms of a decode step by the tokens in it (index = tokens); empty with batching "full". */
  stepMs: number[];
}

/**
 * The engine's request/reply calls: arguments and result of each. One
 * message pair carries them all: `call` out, `result` (or `failed`) back.
 */
export interface EngineCalls {
  /** Answered at once by a live engine: the watchdog's heartbeat. */
  ping: { args: Record<string, never>; result: true };
  tokenize: { args: { text: string; special: boolean }; result: number[] };
  memory: { args: Record<string, never>; result: DeviceMemory };
  estimate: { args: { modelPath: string }; result: MemoryEstimate };
  perplexity: { args: { text: string; maxTokens: number }; result: { perplexity: number; scoredTokens: number } };
}

export type EngineCall = { [M in keyof EngineCalls]: { method: M; args: EngineCalls[M]["args"] } }[keyof EngineCalls];

export type ToEngine =
  /** `cache: false`: neither use nor leave cached KV cells (the warm-up). The engine chooses the sequence. */
  | { type: "generate"; id: number; input: GenerationInput; sampling: SamplingSettings; cache?: boolean }
  | { type: "cancel"; id: number }
  | { type: "call"; id: number; call: EngineCall }
  | { type: "shutdown" };

export type FromEngine =
  | { type: "ready"; info: EngineInfo }
  | { type: "load-failed"; message: string }
  | { type: "load-progress"; progress: number }
  /** The thread tuner decided (kept or changed the count) after a probe. */
  | { type: "threads"; decision: ThreadDecision }
  | { type: "started"; id: number; promptTokens: number }
  /** After each generation, ended or failed: KV cells holding tokens (cached or in use), of all the context's cells. */
  | { type: "kv-cells"; used: number; total: number }
  /** `sentAt`: `sharedClockMs()` in the engine when sent, so the server can time the hop. */
  | ({ type: "chunk"; id: number; text: string; tokens: number[]; sentAt: number } & GenerationProgress)
  | ({ type: "done"; id: number } & GenerationOutcome)
  | { type: "failed"; id: number; kind: ErrorKind; message: string }
  | { type: "result"; id: number; value: unknown };

/**
 * Milliseconds on a clock every process on the machine shares: the system's
 * monotonic clock (`performance.timeOrigin` is not: each process reads the
 * wall clock once at start, so two processes can disagree by a fraction of a
 * millisecond, as much as the hop being timed).
 */
export function sharedClockMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Memory a model would need with this engine's context settings (node-llama-cpp's estimate). */
export interface MemoryEstimate {
  ramBytes: number;
  vramBytes: number;
}

/** The accelerator's memory as the engine sees it (zeros on the CPU backend). */
export interface DeviceMemory {
  vramTotal: number;
  vramUsed: number;
  vramFree: number;
}

/** Settings the server passes to an engine process at start (as JSON in argv). */
export interface EngineOptions {
  modelPath: string;
  gpu: "auto" | "cuda" | "vulkan" | "cpu";
  /** Decode threads; "auto": the cores less one to start with, then measured while serving (CPU). */
  threads: number | "auto";
  /** Tokens per sequence. */
  contextSize: number;
  /** Parallel sequences; "auto" is 4 on CPU and 8 on a GPU. */
  sequences: number | "auto";
  batchSize: number;
  /**
   * How many waiting sequences decode together: "measured" times a decode
   * step of each size at load and picks the cheapest per token; "full"
   * always decodes every waiting sequence together.
   */
  batching: "measured" | "full";
  /** How streamed chunks are paced (default: every token alone); see StreamPacer. */
  streamInterval?: StreamInterval;
  /**
   * Keep each sequence's KV cells after a generation, and start a new one on
   * the free sequence sharing the longest prefix with its prompt, evaluating
   * only the rest (default true).
   */
  prefixCache?: boolean;
  /** llama.cpp's flash attention (default "auto"). */
  flashAttention?: FlashAttention;
  /** ggml's decode threads kept in a pool between decodes, or started by each (default "persistent"). */
  threadPool?: ThreadPool;
}
