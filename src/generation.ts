/**
 * One generation, as every layer speaks of it: what is asked (a chat or raw
 * text), how it is sampled and streamed, and how it went and ended. The
 * services validate into these, config reads the stream interval, scheduling
 * and metrics carry them, the engine's IPC protocol sends them; none of those
 * owns them.
 */
import { ServiceError } from "./errors.js";

/** Why a generation ended. */
export type FinishReason = "stop" | "length" | "stop_sequence" | "cancelled" | "deadline" | "error";

/**
 * How a generation that did not run to its own end finished, from what ended
 * it: `stopped` when the call's signal fired (a cancel, the server's
 * shutdown, the deadline: `cause` is its reason), otherwise `cause` is what it
 * failed with (a server-side cancel, such as a swap's, counts as cancelled).
 * The engine decides the natural ends (stop, length, stop sequence); this,
 * every other.
 */
export function finishReasonOf(cause: unknown, stopped: boolean): FinishReason {
  const kind = cause instanceof ServiceError ? cause.kind : undefined;
  if (kind === "deadline_exceeded") return "deadline";
  if (stopped || kind === "cancelled") return "cancelled";
  return "error";
}

export interface ChatTurn {
  role: "system" | "user" | "assistant";
  content: string;
}

/** What to generate from: a chat (templated) or raw text. */
export type GenerationInput = { kind: "chat"; messages: ChatTurn[] } | { kind: "raw"; text: string };

/** Sampling settings after defaults and validation. */
export interface SamplingSettings {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repeatPenalty: number;
  seed: number;
  stop: string[];
}

/** Greedy decoding of up to `maxNewTokens` tokens, no penalties: for warm-ups and measurements. */
export function greedySampling(maxNewTokens: number): SamplingSettings {
  return { maxNewTokens, temperature: 0, topK: 1, topP: 1, minP: 0, repeatPenalty: 1, seed: 0, stop: [] };
}

/** A generation's timings so far: sent with every chunk, so a call ended before the engine's last word has them. */
export interface GenerationProgress {
  /** Prompt evaluation up to the first token (0 until there is one). */
  prefillMs: number;
  /** Mean number of sequences in the decode steps that gave the generation its tokens (0: none). */
  batchSize: number;
  /** Prompt tokens whose KV cells the sequence already held (the prefix cache), not evaluated again. */
  cachedTokens: number;
}

/** How a generation ended: the text and tokens still held back, and its counts and timings. */
export interface GenerationOutcome extends GenerationProgress {
  text: string;
  tokens: number[];
  finishReason: FinishReason;
  generatedTokens: number;
}

/**
 * `{ tokens: N }`: a message once N tokens are ready (1: every token alone).
 * `{ tokens: N, holdMs: T }`: up to N tokens a message, none held longer than
 * T ms, and a token goes at once when the stream's last gap says the next one
 * will not come within that time, so a slow decode is never held back. (A
 * count is reached, not cut: a character's byte tokens go whole, so a message
 * can carry a few more.)
 * `{ ms: T }`: a message at most every T ms; a token decoded sooner waits for
 * the next message, none longer than T ms, so a decode slower than one token
 * in T ms sends every token at once.
 */
export type StreamInterval = { tokens: number; holdMs?: number } | { ms: number };

export const EVERY_TOKEN: StreamInterval = { tokens: 1 };

/**
 * llama.cpp's flash attention: "auto" lets llama.cpp turn it on where the
 * backend has it (node-llama-cpp's and llama.cpp's tools' default); "on" and
 * "off" force it.
 */
export const FLASH_ATTENTION = ["auto", "on", "off"] as const;
export type FlashAttention = (typeof FLASH_ATTENTION)[number];

/**
 * How ggml's decode threads live: "persistent", one pool per context kept
 * between decodes (as llama.cpp's own server runs); "per-decode", started
 * and joined by every decode (node-llama-cpp's prebuilt as it comes).
 */
export const THREAD_POOL = ["persistent", "per-decode"] as const;
export type ThreadPool = (typeof THREAD_POOL)[number];

/**
 * The default: up to 8 tokens a message, none held over 50 ms. It groups
 * where the decode outpaces what a message costs and leaves a slow decode's
 * tokens alone (bench/results/stream-auto/: 7.1-7.5 tokens a message at one
 * stream of the small model, 1.8-2.3 at eight; bench/notes.md, "Streamed
 * messages").
 */
export const AUTO_STREAM_INTERVAL: StreamInterval = { tokens: 8, holdMs: 50 };

/** "4" → 4 tokens, "4/50ms" → 4 tokens held at most 50 ms, "20ms" → 20 ms, "auto"; undefined when the text is none of these. */
export function parseStreamInterval(text: string): StreamInterval | undefined {
  if (text.trim() === "auto") return AUTO_STREAM_INTERVAL;
  const match = /^\s*(\d+)\s*(?:(ms)|\/\s*(\d+)\s*ms)?\s*$/.exec(text);
  if (!match) return undefined;
  if (match[2]) return { ms: Number(match[1]) };
  return match[3] === undefined ? { tokens: Number(match[1]) } : { tokens: Number(match[1]), holdMs: Number(match[3]) };
}
