/**
 * Runs one generation: waits for a slot, drives the engine and records the
 * call's timings. The slot is given back only once the engine has finished
 * with its sequence, even when the caller stops listening early.
 */
import type { EngineProcess } from "../engine/engine-process.js";
import type { FinishReason, GenerationInput, SamplingSettings } from "../generation.js";
import type { RequestMetrics } from "../metrics/request-metrics.js";
import { ServiceError } from "../errors.js";
import { AsyncQueue } from "../util/async-queue.js";
import type { Lease, SlotScheduler } from "./slot-scheduler.js";

export type InferenceEvent =
  | { type: "queued"; position: number }
  | { type: "text"; text: string; tokens: number[] }
  | { type: "done"; text: string; tokens: number[]; finishReason: FinishReason };

export class Inference {
  /** Controllers of the calls admitted here (queued or running), for cancelAll. */
  private readonly calls = new Set<AbortController>();

  /** @param onSettled told each time a call admitted here ends (what drains and shutdown wait on) */
  constructor(
    private readonly engine: EngineProcess,
    private readonly scheduler: SlotScheduler,
    readonly variant: string,
    private readonly onSettled?: () => void,
  ) {}

  get running(): number {
    return this.scheduler.running;
  }

  get waiting(): number {
    return this.scheduler.waiting;
  }

  /** Calls admitted here and not finished: queued or running. */
  get inFlight(): number {
    return this.calls.size;
  }

  /**
   * Cancels every call admitted here, queued or running (a swap with the
   * CANCEL policy, or a drain that ran out of time). Each ends with
   * `cancelled` and this message.
   */
  cancelAll(message: string): void {
    const reason = new ServiceError("cancelled", message);
    for (const controller of this.calls) controller.abort(reason);
  }

  tokenize(text: string, special: boolean): Promise<number[]> {
    return this.engine.tokenize(text, special);
  }

  async *generate(
    input: GenerationInput,
    sampling: SamplingSettings,
    signal: AbortSignal,
    metrics: RequestMetrics,
  ): AsyncGenerator<InferenceEvent> {
    // The server's own stop (cancelAll), and the stop of the engine when the caller leaves early.
    const own = new AbortController();
    const stop = AbortSignal.any([signal, own.signal]);
    this.calls.add(own);
    let lease: Lease | undefined;
    // While queued, each change of place is passed on as an event.
    const positions = new AsyncQueue<number>();
    metrics.queued();
    const acquired = this.scheduler.acquire(stop, (position) => positions.push(position));
    void acquired.then(
      () => positions.end(),
      () => positions.end(),
    );
    try {
      for await (const position of positions) yield { type: "queued", position };
      lease = await acquired;
    } finally {
      if (lease === undefined) {
        // Refused, cancelled or left while queued: leave the queue, and give
        // back a slot granted in the meantime.
        own.abort();
        acquired.then(
          (granted) => granted.release(),
          () => {},
        );
        this.settled(own);
      }
    }
    metrics.admitted();
    const events = this.engine.generate(input, sampling, stop)[Symbol.asyncIterator]();
    let finished = false;
    try {
      for (;;) {
        const next = await events.next();
        if (next.done) {
          finished = true;
          break;
        }
        const event = next.value;
        if (event.type === "started") {
          metrics.promptTokens = event.promptTokens;
        } else if (event.type === "chunk") {
          metrics.chunk(event.tokens.length, event.text !== "", event.hopMs);
          metrics.progress(event);
          yield { type: "text", text: event.text, tokens: event.tokens };
        } else {
          metrics.chunk(event.tokens.length, event.text !== "");
          metrics.progress(event);
          metrics.generatedTokens = event.generatedTokens;
          metrics.finishReason = event.finishReason;
          finished = true;
          // Cancelled by the server (a swap), not by the caller: the caller is told why.
          if (event.finishReason === "cancelled" && own.signal.aborted && !signal.aborted) throw own.signal.reason;
          yield { type: "done", text: event.text, tokens: event.tokens, finishReason: event.finishReason };
        }
      }
    } finally {
      if (!finished) {
        // The caller left early (cancel, error): stop the engine and wait until
        // the sequence is free before the slot can be given to anyone else.
        own.abort();
        try {
          for (let next = await events.next(); !next.done; next = await events.next()) {
            // the caller has its metrics already: what the engine says now is not waited for
          }
        } catch {
          // the engine already reported its failure to the caller
        }
      }
      lease.release();
      this.settled(own);
    }
  }

  private settled(call: AbortController): void {
    this.calls.delete(call);
    this.onSettled?.();
  }
}
