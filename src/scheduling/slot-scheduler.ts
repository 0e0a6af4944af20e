/**
 * Admission in front of the engine's sequences: a slot per sequence and a
 * bounded FIFO queue. A full queue refuses at once; a waiter whose signal
 * fires (cancel, deadline, shutdown) leaves the queue at once.
 */
import { ServiceError } from "../errors.js";

export interface Lease {
  readonly slot: number;
  /** Gives the slot back; idempotent. */
  release(): void;
}

interface Waiter {
  grant(slot: number): void;
  /** Told its place in the queue (1 = next) on entry and whenever it moves up. */
  onPosition?(position: number): void;
}

export class SlotScheduler {
  private readonly free: number[];
  private readonly queue: Waiter[] = [];

  constructor(
    readonly slots: number,
    readonly maxQueue: number,
  ) {
    this.free = Array.from({ length: slots }, (_, i) => i);
  }

  get running(): number {
    return this.slots - this.free.length;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Resolves with a slot when one is free. Rejects with `resource_exhausted`
   * when the queue is full, and with the signal's reason if it fires first.
   */
  acquire(signal: AbortSignal, onPosition?: (position: number) => void): Promise<Lease> {
    if (signal.aborted) return Promise.reject(signal.reason);
    const slot = this.free.shift();
    if (slot !== undefined) return Promise.resolve(this.lease(slot));
    if (this.queue.length >= this.maxQueue) {
      return Promise.reject(
        new ServiceError(
          "resource_exhausted",
          `the server is busy: ${this.slots} running and ${this.queue.length} queued (the queue limit); retry later`,
          { retryAfterMs: 1000 },
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: (granted) => {
          signal.removeEventListener("abort", onAbort);
          resolve(this.lease(granted));
        },
        onPosition,
      };
      const onAbort = () => {
        const at = this.queue.indexOf(waiter);
        if (at !== -1) {
          this.queue.splice(at, 1);
          this.announcePositions(at);
        }
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.queue.push(waiter);
      onPosition?.(this.queue.length);
    });
  }

  /** Tells every waiter from index `from` on its new place. */
  private announcePositions(from: number): void {
    for (let i = from; i < this.queue.length; i++) this.queue[i]!.onPosition?.(i + 1);
  }

  private lease(slot: number): Lease {
    let released = false;
    return {
      slot,
      release: () => {
        if (released) return;
        released = true;
        const next = this.queue.shift();
        if (next) {
          next.grant(slot);
          this.announcePositions(0);
        } else {
          // Lowest first: running sequences then keep ids next to each other, which lets
          // llama.cpp decode them as one batch (see DecodeLoop).
          this.free.push(slot);
          this.free.sort((a, b) => a - b);
        }
      },
    };
  }
}
