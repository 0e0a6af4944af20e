/**
 * One call's timings and counts, from receipt to end. The service turns a
 * snapshot into trailers (plain and `-bin`) and the Prometheus observations.
 */
import type { FinishReason, GenerationProgress } from "../generation.js";

export interface MetricsSnapshot {
  variant: string;
  promptTokens: number;
  generatedTokens: number;
  queueMs: number;
  ttftMs: number;
  prefillMs: number;
  decodeTokensPerSecond: number;
  totalMs: number;
  finishReason: FinishReason;
  /** Mean time a chunk took from the engine process to the server process (0: no chunks). */
  engineHopMs: number;
  /** Mean number of requests decoded together in the steps that gave this one its tokens (0: none). */
  batchSize: number;
  /** Prompt tokens the prefix cache held, not evaluated again. */
  cachedPromptTokens: number;
}

export class RequestMetrics {
  variant = "";
  promptTokens = 0;
  /** The engine's count once it has ended the generation; until then the tokens streamed are counted. */
  generatedTokens: number | undefined;
  prefillMs = 0;
  batchSize = 0;
  cachedPromptTokens = 0;
  finishReason: FinishReason = "error";
  private readonly receivedAt = performance.now();
  private queuedAt: number | undefined;
  private slotAt: number | undefined;
  private firstTextAt: number | undefined;
  private firstTokenAt: number | undefined;
  private lastTokenAt: number | undefined;
  private tokensSeen = 0;
  private hopMsTotal = 0;
  private hops = 0;
  private endAt: number | undefined;

  /** The call asked for a slot (it waits in the queue until it has one, or is refused). */
  queued(): void {
    this.queuedAt ??= performance.now();
  }

  /** The call got a slot. */
  admitted(): void {
    this.slotAt ??= performance.now();
  }

  /** A chunk reached the server: `tokens` new tokens, with or without text, `hopMs` after the engine sent it. */
  chunk(tokens: number, hasText: boolean, hopMs?: number): number {
    const now = performance.now();
    if (hopMs !== undefined) {
      this.hopMsTotal += hopMs;
      this.hops++;
    }
    if (hasText) this.firstTextAt ??= now;
    if (tokens > 0) {
      this.firstTokenAt ??= now;
      this.lastTokenAt = now;
      this.tokensSeen += tokens;
    }
    return now;
  }

  /** The engine's timings so far, from its latest message. */
  progress(p: GenerationProgress): void {
    this.prefillMs = p.prefillMs;
    this.batchSize = p.batchSize;
    this.cachedPromptTokens = p.cachedTokens;
  }

  end(): void {
    this.endAt ??= performance.now();
  }

  snapshot(): MetricsSnapshot {
    const end = this.endAt ?? performance.now();
    const decodeSeconds =
      this.firstTokenAt !== undefined && this.lastTokenAt !== undefined ? (this.lastTokenAt - this.firstTokenAt) / 1000 : 0;
    return {
      variant: this.variant,
      promptTokens: this.promptTokens,
      generatedTokens: this.generatedTokens ?? this.tokensSeen,
      // A call refused before it asked for a slot never queued; one that streamed no text has no first text.
      queueMs: this.queuedAt === undefined ? 0 : (this.slotAt ?? end) - this.receivedAt,
      ttftMs: this.firstTextAt === undefined ? 0 : this.firstTextAt - this.receivedAt,
      prefillMs: this.prefillMs,
      decodeTokensPerSecond: decodeSeconds > 0 ? ((this.generatedTokens ?? this.tokensSeen) - 1) / decodeSeconds : 0,
      totalMs: end - this.receivedAt,
      finishReason: this.finishReason,
      engineHopMs: this.hops > 0 ? this.hopMsTotal / this.hops : 0,
      batchSize: this.batchSize,
      cachedPromptTokens: this.cachedPromptTokens,
    };
  }
}
