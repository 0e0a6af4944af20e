/**
 * Picks the decode thread count while serving, from the decode steps
 * themselves. Which count is fastest depends on more than the CPU: llama.cpp's
 * threads busy-wait for each other at every step, so when every core decodes,
 * the server process's work at each token takes a core from a decode thread
 * and the others wait for it. Measured on 2-core machines of the same kind:
 * on an Intel Xeon 2 threads served a 7B model 1.8× faster than 1; on an AMD
 * EPYC 2 threads served the 159M model at 0.24× of 1. A measurement at load,
 * with no server work around the decode, picks 2 on both. So the tuner starts
 * at the safe count and, every so often, decodes a few steps at each other
 * count under the real load, keeping the fastest.
 *
 * It compares steps of the same size only (one token per sequence, the same
 * number of sequences), by their medians; a probe that goes badly is cut short
 * after a few steps, and probes that confirm the current count come less and
 * less often.
 */
import os from "node:os";

/**
 * Decode threads that are always safe: one per core this process may use,
 * less one for the server process. Where the tuner starts, and what a tool
 * without it (evaluation, the bench's default) uses.
 */
export function safeThreadCount(): number {
  return Math.max(1, os.availableParallelism() - 1);
}

export interface ThreadTunerOptions {
  /** Thread counts to choose from (at least one). */
  candidates: readonly number[];
  /** The count to start with (one of the candidates). */
  start: number;
  /** Steps at the current count before each probe (the latest this many are its baseline). */
  settleSteps?: number;
  /** Steps before the first probe, soon after start: until then the count may be the slow one. */
  firstSettleSteps?: number;
  /** Steps measured at a probed count (after one not counted, which meets the change). */
  probeSteps?: number;
  /** Steps between probes; doubled after each round that kept the current count, up to 64×. */
  reprobeSteps?: number;
  /** How much faster a probed count must be to be chosen (0.05: 5%). */
  margin?: number;
}

/** A choice the tuner made, with what it measured: median ms of a step of `size` sequences, by thread count. */
export interface ThreadDecision {
  threads: number;
  previous: number;
  size: number;
  stepMs: Record<number, number>;
  /** "switched", "kept" (the probe was slower or within the margin), or "cut" (the probe was much slower). */
  outcome: "switched" | "kept" | "cut";
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export class ThreadTuner {
  private readonly candidates: readonly number[];
  private readonly settleSteps: number;
  private readonly probeSteps: number;
  private readonly reprobeSteps: number;
  private readonly margin: number;
  /** The count chosen; during a probe, steps run at `probing` instead. */
  private chosen: number;
  private probing: number | undefined;
  /** Step times by size, at the current count (since the last decision) and at the probed one. */
  private baseline = new Map<number, number[]>();
  private probe = new Map<number, number[]>();
  private skipNext = false;
  /** Steps left at the current count before the next probe. */
  private untilProbe: number;
  private quietProbes = 0;
  /** Candidates still to probe in this round. */
  private queue: number[] = [];
  private round: ThreadDecision[] = [];

  constructor(
    options: ThreadTunerOptions,
    /** Sets the thread count for the next step. */
    private readonly apply: (threads: number) => void,
    private readonly onDecision: (decision: ThreadDecision) => void = () => {},
  ) {
    if (!options.candidates.includes(options.start)) throw new Error(`start ${options.start} is not a candidate`);
    this.candidates = [...options.candidates];
    this.chosen = options.start;
    this.settleSteps = options.settleSteps ?? 12;
    this.probeSteps = options.probeSteps ?? 8;
    this.reprobeSteps = options.reprobeSteps ?? 2000;
    this.margin = options.margin ?? 0.05;
    this.untilProbe = options.firstSettleSteps ?? 6;
  }

  /** The count chosen so far. */
  get current(): number {
    return this.chosen;
  }

  /** The thread count steps run at now. */
  get threads(): number {
    return this.probing ?? this.current;
  }

  /** A decode step where each of `size` sequences fed one token took `ms`. */
  step(size: number, ms: number): void {
    if (this.candidates.length < 2) return;
    if (this.probing === undefined) {
      // The latest steps only: a sequence's steps grow slower as its context fills.
      const samples = push(this.baseline, size, ms);
      if (samples.length > this.settleSteps) samples.shift();
      if (--this.untilProbe <= 0) this.startRound();
      return;
    }
    if (this.skipNext) {
      this.skipNext = false;
      return;
    }
    const samples = push(this.probe, size, ms);
    const base = this.baseline.get(size);
    // A count that is far slower here is not kept running for the whole probe.
    if (samples.length >= 3 && base !== undefined && base.length >= 3 && median(samples) > 1.5 * median(base)) {
      this.finishProbe("cut", size);
      return;
    }
    const measured = [...this.probe.values()].reduce((n, s) => n + s.length, 0);
    if (measured >= this.probeSteps) this.finishProbe(undefined, undefined);
  }

  private startRound(): void {
    this.queue = this.candidates.filter((c) => c !== this.current);
    this.round = [];
    this.nextProbe();
  }

  private nextProbe(): void {
    const next = this.queue.shift();
    if (next === undefined) {
      this.endRound();
      return;
    }
    this.probing = next;
    this.probe = new Map();
    this.skipNext = true;
    this.apply(next);
  }

  /** The size both runs have the most steps of (at least 3 each), if any. */
  private commonSize(): number | undefined {
    let best: number | undefined;
    let most = 0;
    for (const [size, samples] of this.probe) {
      const base = this.baseline.get(size);
      if (base === undefined || base.length < 3 || samples.length < 3) continue;
      const n = Math.min(base.length, samples.length);
      if (n > most) {
        most = n;
        best = size;
      }
    }
    return best;
  }

  private finishProbe(cut: "cut" | undefined, cutSize: number | undefined): void {
    const probed = this.probing!;
    const size = cutSize ?? this.commonSize();
    if (size !== undefined) {
      const stepMs = { [this.current]: median(this.baseline.get(size)!), [probed]: median(this.probe.get(size)!) };
      const faster = cut === undefined && stepMs[probed]! < stepMs[this.current]! * (1 - this.margin);
      this.round.push({
        threads: faster ? probed : this.current,
        previous: this.current,
        size,
        stepMs,
        outcome: faster ? "switched" : (cut ?? "kept"),
      });
    }
    this.probing = undefined;
    this.nextProbe();
  }

  private endRound(): void {
    // The fastest of this round's winners against the current count.
    const best = this.round
      .filter((d) => d.outcome === "switched")
      .sort((a, b) => a.stepMs[a.threads]! / a.stepMs[a.previous]! - b.stepMs[b.threads]! / b.stepMs[b.previous]!)[0];
    const decision = best ?? this.round[0];
    if (best) {
      this.chosen = best.threads;
      this.quietProbes = 0;
    } else if (decision) {
      this.quietProbes = Math.min(this.quietProbes + 1, 6);
    }
    this.apply(this.current);
    this.baseline = new Map();
    // A round that measured nothing comparable (the load changed meanwhile) is tried again soon.
    this.untilProbe = decision ? this.reprobeSteps * 2 ** this.quietProbes : this.settleSteps;
    if (decision) this.onDecision(decision);
  }
}

function push(map: Map<number, number[]>, size: number, ms: number): number[] {
  const samples = map.get(size) ?? [];
  samples.push(ms);
  map.set(size, samples);
  return samples;
}
