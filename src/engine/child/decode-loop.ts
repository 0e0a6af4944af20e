/**
 * Continuous batching over one context's sequences: a single loop that, each
 * step, puts the pending tokens of the sequences it serves into one batch (a
 * prompt's tokens, or the token a generation sampled last), decodes it, and
 * lets each sequence sample its next token from its logits.
 *
 * It drives node-llama-cpp's native context directly (initBatch, addToBatch,
 * decodeBatch, sampleToken) instead of through `LlamaContextSequence.evaluate`,
 * whose per-token JavaScript (async generators, locks, a dispatch a turn later,
 * a thread reservation on a timer) cost 3–8% of a small model's token here, and
 * whose dispatch sent four streams out as batches of three.
 *
 * A step's sequences go into the batch in ascending id order: with a KV cache
 * per sequence, llama.cpp decodes a batch in one pass only over a run of
 * consecutive ascending ids and splits it anywhere else.
 *
 * The loop also owns the sequences' KV cells, and knows which tokens each
 * sequence's cells hold. Work that starts at position 0 starts on an emptied
 * sequence; with `prefixCache` on, work that allows it (`cache`) keeps the
 * cells of the longest prefix its tokens share with what the sequence holds
 * (all but its last token at most: the next token's logits must come from a
 * real decode) and leaves its own cells behind when it ends, for the next
 * work with the same prefix. Cells are removed only between decodes, never
 * while one is running on the native thread.
 */

/** Index of a token's logits in the batch just decoded. */
export type LogitIndex = number;

/** node-llama-cpp's native sampler, as the loop's callers use it. */
export interface NativeSampler {
  applyConfig(config: Record<string, unknown>): void;
  dispose(): void;
}

/** The part of node-llama-cpp's native context (its `_ctx`) the loop drives. */
export interface NativeContext {
  initBatch(size: number): void;
  addToBatch(sequenceId: number, firstTokenSequenceIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  sampleToken(index: LogitIndex, sampler: NativeSampler): Promise<number>;
  sampleToken(
    index: LogitIndex,
    sampler: NativeSampler,
    probabilities: boolean,
  ): Promise<[token: number, probabilities: number[] | undefined, confidence: number | undefined]>;
  removeTokenCellsFromSequence(sequenceId: number, startPos: number, endPos: number): boolean;
  /** Threads for the decodes from now on (llama_set_n_threads). */
  setThreads(threads: number): void;
}

const NATIVE_METHODS = [
  "initBatch",
  "addToBatch",
  "decodeBatch",
  "sampleToken",
  "removeTokenCellsFromSequence",
  "setThreads",
] as const;

/** Throws unless `native` has every method the loop calls (it is node-llama-cpp's internal object). */
export function assertNativeContext(native: unknown): asserts native is NativeContext {
  const missing = NATIVE_METHODS.filter((m) => typeof (native as Record<string, unknown> | undefined)?.[m] !== "function");
  if (missing.length > 0) {
    throw new Error(
      `node-llama-cpp's native context lacks ${missing.join(", ")}: the engine drives node-llama-cpp 3.21.1's addon ` +
        `directly, and this installed version differs (run npm ci)`,
    );
  }
}

/** One sequence's work in the loop. */
export interface SequenceWork {
  readonly sequenceId: number;
  /** Tokens to put into the sequence next; the loop takes them from the front. */
  pending: number[];
  /** Position in the sequence of `pending[0]`; work that starts at 0 starts on an emptied sequence. */
  position: number;
  /** Logits for every token fed ("all", to score a text), or for the last one only ("last", to generate). */
  readonly logits: "all" | "last";
  /**
   * With the loop's `prefixCache` on, work starting at position 0 begins after
   * the prefix its tokens share with the sequence's cells, and its cells stay
   * when it ends. The loop sets `cachedTokens` to the tokens it did not feed.
   */
  readonly cache?: boolean;
  cachedTokens?: number;
  /**
   * The sampler for work that samples one token a step from its last logits:
   * the loop then asks for the sample together with the decode (see `step`).
   * It must not be reconfigured between a step's start and its `afterStep`.
   */
  readonly sampler?: NativeSampler;
  /**
   * After a step that fed this work, in a batch of `sequences` sequences:
   * `indexes` are the logits it asked for (none while a prompt is still going
   * in); `sampled`, with a `sampler`, is the token sampled from them. It sets
   * `pending` for the next step, or returns false when it is done.
   */
  afterStep(native: NativeContext, indexes: Uint32Array, sequences: number, sampled?: Promise<number>): Promise<boolean>;
}

export class DecodeLoop {
  /** Work with tokens to feed, in the order it became ready: whoever was left out of a step goes first in the next. */
  private readonly ready: SequenceWork[] = [];
  /** How each work's promise (from `run`) settles. */
  private readonly settle = new Map<SequenceWork, { resolve(): void; reject(error: unknown): void }>();
  private running = false;
  /** Why the loop takes no more work, once closed. */
  private closed: unknown;
  private idle: (() => void)[] = [];
  /** Per sequence id: the tokens its KV cells hold, by position (none listed: an empty sequence). */
  private readonly held = new Map<number, number[]>();
  /** Where each work's sequence must be cut back to before the work is first fed. */
  private readonly cutAt = new Map<SequenceWork, number>();
  /** When each sequence last took work (a counter), to choose the least recently used. */
  private readonly lastUsed = new Map<number, number>();
  private uses = 0;
  /** Keep sequences' cells between works that allow it (`SequenceWork.cache`). */
  prefixCache = false;
  /**
   * Ask for each step's samples together with its decode. Only where the
   * native calls run one at a time in the order they are made: the engine
   * process's libuv pool of one thread. With more, a sample could run beside
   * the decode and read logits not yet written.
   */
  sampleBehindDecode = false;

  /**
   * @param batchSize most tokens in one decode (node-llama-cpp's context batch size)
   * @param groupSize how many of the `ready` sequences go into the next step
   * @param onStep told the size and time (decode and sampling) of each step where every sequence fed one token
   */
  constructor(
    private readonly native: NativeContext,
    private readonly batchSize: number,
    public groupSize: (ready: number) => number = (ready) => ready,
    public onStep?: (size: number, ms: number) => void,
  ) {}

  /**
   * Runs `work` from the next step on. Resolves when it is done (its
   * `afterStep` returned false) and its sequence is emptied; rejects when a
   * step failed (the decode threw, or `afterStep` did) or the loop closed.
   */
  run(work: SequenceWork): Promise<void> {
    if (this.closed !== undefined) return Promise.reject(this.closed);
    // Two works on one sequence would put their tokens into the same KV cells.
    if (this.busy(work.sequenceId)) {
      return Promise.reject(new Error(`sequence ${work.sequenceId} already has work in the decode loop`));
    }
    const done = new Promise<void>((resolve, reject) => this.settle.set(work, { resolve, reject }));
    this.lastUsed.set(work.sequenceId, ++this.uses);
    if (work.position === 0) {
      const held = this.held.get(work.sequenceId) ?? [];
      const reuse = this.prefixCache && work.cache === true;
      const common = reuse ? Math.max(0, Math.min(commonPrefix(held, work.pending), work.pending.length - 1)) : 0;
      this.cutAt.set(work, common);
      this.held.set(work.sequenceId, held.slice(0, common));
      work.position = common;
      work.pending = work.pending.slice(common);
      work.cachedTokens = common;
    }
    this.ready.push(work);
    if (!this.running) {
      this.running = true;
      // Started a turn later, so work added in the same turn (concurrent calls) shares the first step.
      setImmediate(() => void this.loop());
    }
    return done;
  }

  /**
   * The sequence, of `sequences`, that new work on `tokens` should take: with
   * the prefix cache, the free one holding the longest prefix of them (ties:
   * the least recently used, so that recent conversations keep their cells);
   * without it, the lowest free id (consecutive ids decode in one pass).
   * Undefined when all are busy.
   */
  choose(tokens: readonly number[], sequences: number): number | undefined {
    let best: number | undefined;
    let bestCommon = -1;
    for (let id = 0; id < sequences; id++) {
      if (this.busy(id)) continue;
      if (!this.prefixCache) return id;
      const common = commonPrefix(this.held.get(id) ?? [], tokens);
      if (common > bestCommon || (common === bestCommon && (this.lastUsed.get(id) ?? 0) < (this.lastUsed.get(best!) ?? 0))) {
        best = id;
        bestCommon = common;
      }
    }
    return best;
  }

  /** Tokens held in KV cells over all sequences (what the prefix cache keeps, and work in progress). */
  get heldTokens(): number {
    let n = 0;
    for (const tokens of this.held.values()) n += tokens.length;
    return n;
  }

  /** Whether any work is in the loop. */
  get working(): boolean {
    return this.settle.size > 0;
  }

  /** Whether work on `sequenceId` is in the loop (from `run` until its promise settles). */
  busy(sequenceId: number): boolean {
    for (const work of this.settle.keys()) if (work.sequenceId === sequenceId) return true;
    return false;
  }

  /**
   * Fails all waiting work with `reason`, refuses new work, and resolves once
   * the step under way (if any) is over: the native context may then be freed.
   */
  async close(reason: unknown): Promise<void> {
    this.closed = reason;
    for (const work of this.ready.splice(0)) this.end(work, reason);
    if (this.running) await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  private async loop(): Promise<void> {
    try {
      while (this.ready.length > 0 && this.closed === undefined) await this.step();
    } finally {
      this.running = false;
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }

  private async step(): Promise<void> {
    const size = Math.max(1, Math.min(this.ready.length, this.groupSize(this.ready.length)));
    const chosen = this.ready.splice(0, size).sort((a, b) => a.sequenceId - b.sequenceId);
    const fed: { work: SequenceWork; count: number; tokens: number[]; indexes: Uint32Array; sampled?: Promise<number> }[] = [];
    const leftOut: SequenceWork[] = [];
    let room = this.batchSize;
    for (const work of chosen) {
      const count = Math.min(work.pending.length, room);
      if (count === 0) {
        leftOut.push(work);
        continue;
      }
      room -= count;
      fed.push({ work, count, tokens: work.pending.slice(0, count), indexes: new Uint32Array(0) });
    }
    // No room left for them in this batch (a long prompt took it): first in line for the next.
    this.ready.unshift(...leftOut);
    const started = performance.now();
    try {
      for (const { work } of fed) {
        const cut = this.cutAt.get(work);
        if (cut === undefined) continue;
        this.native.removeTokenCellsFromSequence(work.sequenceId, cut, -1);
        this.cutAt.delete(work);
      }
      this.native.initBatch(this.batchSize - room);
      for (const entry of fed) {
        const { work, count, tokens } = entry;
        const complete = count === work.pending.length;
        const logitIndexes =
          work.logits === "all"
            ? Uint32Array.from({ length: count }, (_, i) => i)
            : complete
              ? Uint32Array.of(count - 1)
              : new Uint32Array(0);
        entry.indexes = this.native.addToBatch(work.sequenceId, work.position, Uint32Array.from(tokens), logitIndexes);
        work.position += count;
        work.pending = work.pending.slice(count);
      }
      const decoded = this.native.decodeBatch();
      // Sampling queued right behind the decode (`sampleBehindDecode`): each sample starts the moment
      // the decode ends, with no trip through JavaScript between (a trip wakes this thread, then the
      // pool's, on every token's critical path).
      if (this.sampleBehindDecode) {
        for (const entry of fed) {
          if (entry.work.sampler === undefined || entry.indexes.length === 0) continue;
          entry.sampled = this.native.sampleToken(entry.indexes[0]!, entry.work.sampler);
          // After a failed decode the sample is never read.
          entry.sampled.catch(() => {});
        }
      }
      await decoded;
    } catch (error) {
      for (const { work } of fed) this.end(work, error);
      return;
    }
    for (const { work, tokens } of fed) this.held.get(work.sequenceId)?.push(...tokens);
    // Every sequence samples at once: the calls queue together on the native side.
    const goOn = await Promise.all(
      fed.map(({ work, indexes, sampled }) =>
        work.afterStep(this.native, indexes, fed.length, sampled).then(
          (goOn) => goOn || this.end(work),
          (error: unknown) => this.end(work, error),
        ),
      ),
    );
    if (this.onStep && fed.length === chosen.length && fed.every((f) => f.count === 1)) {
      this.onStep(fed.length, performance.now() - started);
    }
    fed.forEach(({ work }, i) => {
      if (!goOn[i]) return;
      if (this.closed !== undefined) this.end(work, this.closed);
      else this.ready.push(work);
    });
  }

  /**
   * Work leaves the loop (no decode is running here); with an `error` it
   * failed. Its sequence is emptied, unless the work's cells are to stay
   * (prefix cache, a clean end): then they hold exactly the tokens listed. Always false.
   */
  private end(work: SequenceWork, error?: unknown): false {
    this.cutAt.delete(work);
    if (!(this.prefixCache && work.cache === true && error === undefined)) this.empty(work.sequenceId);
    const settle = this.settle.get(work);
    this.settle.delete(work);
    if (error === undefined) settle?.resolve();
    else settle?.reject(error);
    return false;
  }

  private empty(sequenceId: number): void {
    this.held.delete(sequenceId);
    try {
      this.native.removeTokenCellsFromSequence(sequenceId, 0, -1);
    } catch {
      // The context is gone (disposed): so are the cells.
    }
  }
}

/** How many tokens `a` and `b` share from the start. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
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
