/**
 * Decode steps across a context's sequences, in lockstep. node-llama-cpp
 * decodes whatever sequences have queued a token when its dispatch runs; each
 * sequence samples on the libuv pool and queues its next token when its own
 * sampling ends, so left alone the sequence served last misses the next batch
 * (four streams go out as batches of three, and one more decode per step).
 *
 * Each generation that holds a token waits here before it asks for the next.
 * When the step in flight has come back in full, the gate releases a group of
 * waiting generations together, in one event-loop turn, so their next tokens
 * are queued before node-llama-cpp dispatches and go out as one batch. The
 * group's size comes from `groupSize`: everyone waiting by default; on a CPU
 * where a batch of two costs more than two single decodes, fewer (see
 * `cheapestGroup`). Generations are chosen in the order they arrived, so a
 * stream left out of one step goes first in the next; the chosen ones queue
 * their tokens in the order of their sequence ids, because llama.cpp (with a
 * KV cache per sequence) decodes a batch in one pass only over a run of
 * consecutive ascending ids and splits it anywhere else.
 */
export class DecodeGate {
  private readonly waiting: { order: number; resolve: () => void }[] = [];
  /** Generations released (or just entered) and not yet back with their token. */
  private running = 0;
  private releaseScheduled = false;
  private step: { size: number; startedAt: number } | undefined;

  /**
   * @param groupSize how many of the `ready` waiting generations go in the next step
   * @param onStep told each step's size and time, release to the last token back
   */
  constructor(
    public groupSize: (ready: number) => number = (ready) => ready,
    public onStep?: (size: number, ms: number) => void,
  ) {}

  /** A generation has its first token and joins the steps. */
  enter(): void {
    this.running++;
  }

  /**
   * Back with a token; resolves when this generation may queue its next one.
   * `order` (the sequence id) orders the generations released together.
   */
  turn(order = 0): Promise<void> {
    return new Promise((resolve) => {
      this.back();
      this.waiting.push({ order, resolve });
      this.release();
    });
  }

  /** Back for good: the generation ended (or failed) after its last token. */
  leave(): void {
    this.back();
    this.release();
  }

  private back(): void {
    this.running--;
    if (this.running === 0 && this.step) {
      this.onStep?.(this.step.size, performance.now() - this.step.startedAt);
      this.step = undefined;
    }
  }

  private release(): void {
    if (this.running > 0 || this.waiting.length === 0 || this.releaseScheduled) return;
    if (this.waiting.length === 1) {
      // Alone: nobody to gather, so no event-loop turn to wait (node-llama-cpp's dispatch loop,
      // still running, takes the token at once).
      this.go(1);
      return;
    }
    this.releaseScheduled = true;
    // One turn later: node-llama-cpp's dispatch loop has then seen an empty queue and let go of the
    // context, and every released generation queues its token within this one callback.
    setImmediate(() => {
      this.releaseScheduled = false;
      if (this.running > 0 || this.waiting.length === 0) return;
      this.go(Math.max(1, Math.min(this.waiting.length, this.groupSize(this.waiting.length))));
    });
  }

  private go(size: number): void {
    this.step = { size, startedAt: performance.now() };
    this.running += size;
    const chosen = this.waiting.splice(0, size).sort((a, b) => a.order - b.order);
    for (const { resolve } of chosen) resolve();
  }
}

/**
 * The group size to release when `ready` generations wait, from the measured
 * time of a decode step by the tokens in it (`stepMs[k]`, k = 1…): the size
 * with the lowest time per token, where a smaller group must save at least 5%
 * to be chosen over a larger one (a larger step serves more streams at once,
 * and a few percent is within the measurement's noise). Sizes not measured
 * are not chosen; with none measured, everyone goes.
 */
export function cheapestGroup(stepMs: readonly (number | undefined)[], ready: number): number {
  let best = ready;
  let bestPerToken = Infinity;
  for (let k = ready; k >= 1; k--) {
    const ms = stepMs[k];
    if (ms === undefined || !(ms > 0)) continue;
    if (bestPerToken === Infinity || ms / k < bestPerToken * 0.95) {
      best = k;
      bestPerToken = ms / k;
    }
  }
  return best;
}
