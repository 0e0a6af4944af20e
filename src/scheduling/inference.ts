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

  constructor(
    private readonly engine: EngineProcess,
    private readonly scheduler: SlotScheduler,
    readonly variant: string,
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
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) onAbort();
    this.calls.add(controller);
    let lease: Lease | undefined;
    // While queued, each change of place is passed on as an event.
    const positions = new AsyncQueue<number>();
    metrics.queued();
    const acquired = this.scheduler.acquire(controller.signal, (position) => positions.push(position));
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
        controller.abort();
        acquired.then(
          (granted) => granted.release(),
          () => {},
        );
        this.calls.delete(controller);
        signal.removeEventListener("abort", onAbort);
      }
    }
    metrics.admitted();
    const events = this.engine.generate(input, sampling, controller.signal)[Symbol.asyncIterator]();
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
          const serverCancel = controller.signal.reason;
          if (event.finishReason === "cancelled" && serverCancel instanceof ServiceError && !signal.aborted) throw serverCancel;
          yield { type: "done", text: event.text, tokens: event.tokens, finishReason: event.finishReason };
        }
      }
    } finally {
      if (!finished) {
        // The caller left early (cancel, error): stop the engine and wait until
        // the sequence is free before the slot can be given to anyone else.
        controller.abort();
        try {
          for (let next = await events.next(); !next.done; next = await events.next()) {
            // the caller has its metrics already: what the engine says now is not waited for
          }
        } catch {
          // the engine already reported its failure to the caller
        }
      }
      signal.removeEventListener("abort", onAbort);
      this.calls.delete(controller);
      lease.release();
    }
  }
}
