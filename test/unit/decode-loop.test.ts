import { describe, expect, it } from "vitest";
import {
  cheapestGroup,
  DecodeLoop,
  type NativeContext,
  type NativeSampler,
  type SequenceWork,
} from "../../src/engine/child/decode-loop.js";

/** A batch as the fake context saw it: per sequence, the positions fed and which of them asked for logits. */
type Batch = { seq: number; positions: number[]; logits: number[] }[];

type FakeNative = NativeContext & { batches: Batch[]; log: string[]; samplesAskedDuringADecode: number };

/**
 * A stand-in for node-llama-cpp's native context that records each batch and
 * "samples" token 100 + the sequence id; `failOnDecode` makes the n-th decode throw.
 */
function fakeNative(failOnDecode?: number): FakeNative {
  let batch: Batch = [];
  let bySlot: number[] = [];
  let decodes = 0;
  let decoding = false;
  const batches: Batch[] = [];
  /** "decode", and "empty <seq>" for each sequence emptied ("… DURING A DECODE" if one was running). */
  const log: string[] = [];
  const native = {
    batches,
    log,
    /** Samples asked for while a decode ran (with `sampleBehindDecode`, they run after it, in order). */
    samplesAskedDuringADecode: 0,
    initBatch: () => {
      batch = [];
      bySlot = [];
    },
    addToBatch: (seq: number, first: number, tokens: Uint32Array, logitIndexes: Uint32Array) => {
      batch.push({ seq, positions: Array.from(tokens, (_, i) => first + i), logits: Array.from(logitIndexes) });
      return Uint32Array.from(logitIndexes, () => {
        bySlot.push(seq);
        return bySlot.length - 1;
      });
    },
    decodeBatch: async () => {
      decoding = true;
      log.push("decode");
      await new Promise((r) => setImmediate(r));
      decoding = false;
      if (++decodes === failOnDecode) throw new Error("decode failed");
      batches.push(batch);
    },
    sampleToken: async (index: number) => {
      if (decoding) native.samplesAskedDuringADecode++;
      await new Promise((r) => setImmediate(r));
      return 100 + bySlot[index]!;
    },
    removeTokenCellsFromSequence: (seq: number, start: number) => {
      log.push(`${start === 0 ? `empty ${seq}` : `cut ${seq} at ${start}`}${decoding ? " DURING A DECODE" : ""}`);
      return true;
    },
  };
  return native as unknown as FakeNative;
}

const sampler = {} as NativeSampler;

/**
 * A generation of `tokens` tokens after a prompt of `prompt` tokens (0, 1, 2…, or the given
 * tokens); resolves with the tokens it sampled. `cache`: it may use and leave cached cells.
 */
function generation(
  loop: DecodeLoop,
  seq: number,
  prompt: number | number[],
  tokens: number,
  cache = false,
  onStart?: (work: SequenceWork) => void,
  withSampler = false,
): Promise<number[]> {
  const got: number[] = [];
  const work: SequenceWork = {
    sequenceId: seq,
    pending: typeof prompt === "number" ? Array.from({ length: prompt }, (_, i) => i) : [...prompt],
    position: 0,
    logits: "last",
    cache,
    ...(withSampler ? { sampler } : {}),
    async afterStep(native, indexes, _sequences, sampled) {
      if (indexes.length === 0) return true;
      got.push(await (sampled ?? native.sampleToken(indexes[0]!, sampler)));
      if (got.length === tokens) return false;
      this.pending = [got.at(-1)!];
      return true;
    },
  };
  const done = loop.run(work);
  onStart?.(work);
  return done.then(() => got);
}

describe("DecodeLoop", () => {
  it("decodes every running sequence in one batch per step, in ascending sequence id order", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    // Added out of order, in one turn: they share the first step (their prompts) and every step after.
    const results = await Promise.all([generation(loop, 2, 3, 3), generation(loop, 0, 2, 3), generation(loop, 1, 4, 3)]);
    expect(results).toEqual([
      [102, 102, 102],
      [100, 100, 100],
      [101, 101, 101],
    ]);
    expect(native.batches.map((b) => b.map((e) => e.seq))).toEqual([
      [0, 1, 2],
      [0, 1, 2],
      [0, 1, 2],
    ]);
    // The prompts go in whole with logits for their last token; then one token each, at the next position.
    expect(native.batches[0]).toEqual([
      { seq: 0, positions: [0, 1], logits: [1] },
      { seq: 1, positions: [0, 1, 2, 3], logits: [3] },
      { seq: 2, positions: [0, 1, 2], logits: [2] },
    ]);
    expect(native.batches[1]).toEqual([
      { seq: 0, positions: [2], logits: [0] },
      { seq: 1, positions: [4], logits: [0] },
      { seq: 2, positions: [3], logits: [0] },
    ]);
  });

  it("with sampleBehindDecode, asks for each step's samples as it starts the decode, with the same tokens", async () => {
    const plain = fakeNative();
    const plainLoop = new DecodeLoop(plain, 512);
    const expected = await Promise.all([0, 1].map((seq) => generation(plainLoop, seq, 3, 4, false, undefined, true)));
    expect(plain.samplesAskedDuringADecode).toBe(0);
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    loop.sampleBehindDecode = true;
    const results = await Promise.all([0, 1].map((seq) => generation(loop, seq, 3, 4, false, undefined, true)));
    expect(results).toEqual(expected);
    // Four steps (the prompts, then three tokens), two samples each, every one asked for beside its decode.
    expect(native.batches).toHaveLength(4);
    expect(native.samplesAskedDuringADecode).toBe(8);
    // Work without a sampler samples after the decode, as before.
    const other = fakeNative();
    const otherLoop = new DecodeLoop(other, 512);
    otherLoop.sampleBehindDecode = true;
    expect(await generation(otherLoop, 0, 3, 4)).toEqual(expected[0]);
    expect(other.samplesAskedDuringADecode).toBe(0);
  });

  it("with sampleBehindDecode, a failed decode fails its work and its sample is never read", async () => {
    const native = fakeNative(2);
    const loop = new DecodeLoop(native, 512);
    loop.sampleBehindDecode = true;
    await expect(generation(loop, 0, 3, 4, false, undefined, true)).rejects.toThrow("decode failed");
    expect(native.samplesAskedDuringADecode).toBe(2);
  });

  it("empties a sequence before its work starts and when it ends, never while a decode runs", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    const long = generation(loop, 0, 2, 3);
    await new Promise((r) => setImmediate(r)); // sequence 0's first decode is under way
    const late = generation(loop, 1, 2, 1); // arrives during it
    await Promise.all([long, late]);
    expect(native.log).toEqual([
      "empty 0",
      "decode", // 0's prompt
      "empty 1",
      "decode", // 0's token, 1's prompt
      "empty 1", // 1 has its one token
      "decode",
      "empty 0",
    ]);
  });

  it("feeds a prompt longer than the batch over several steps, asking for logits only at its end", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 4);
    expect(await generation(loop, 0, 10, 1)).toEqual([100]);
    expect(native.batches).toEqual([
      [{ seq: 0, positions: [0, 1, 2, 3], logits: [] }],
      [{ seq: 0, positions: [4, 5, 6, 7], logits: [] }],
      [{ seq: 0, positions: [8, 9], logits: [1] }],
    ]);
  });

  it("shares a full batch out in sequence order, and those left out keep their place", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 4);
    await Promise.all([generation(loop, 0, 4, 2), generation(loop, 1, 2, 1), generation(loop, 2, 2, 1)]);
    expect(native.batches.slice(0, 2)).toEqual([
      // Sequence 0's prompt fills the batch; 1 and 2 wait, in their order.
      [{ seq: 0, positions: [0, 1, 2, 3], logits: [3] }],
      [
        { seq: 0, positions: [4], logits: [0] },
        { seq: 1, positions: [0, 1], logits: [1] },
        { seq: 2, positions: [0], logits: [] },
      ],
    ]);
  });

  it("runs a smaller group when told to, whoever was left out going first in the next step", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512, () => 1);
    await Promise.all([generation(loop, 0, 1, 2), generation(loop, 1, 1, 2)]);
    expect(native.batches.map((b) => b.map((e) => e.seq))).toEqual([[0], [1], [0], [1]]);
  });

  it("lets the others go on when one ends, and takes new work into the running steps", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    const long = generation(loop, 0, 1, 4);
    const short = generation(loop, 1, 1, 1);
    await short;
    const late = generation(loop, 2, 1, 1);
    await Promise.all([long, late]);
    const seqs = native.batches.map((b) => b.map((e) => e.seq));
    expect(seqs[0]).toEqual([0, 1]);
    expect(seqs.slice(1).every((s) => s[0] === 0)).toBe(true);
    expect(seqs.flat().filter((s) => s === 2)).toHaveLength(1);
    expect(seqs.flat().filter((s) => s === 0)).toHaveLength(4);
  });

  it("refuses a second work on a sequence that has one, without disturbing it; the sequence is free again once it ends", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    const first = generation(loop, 0, 2, 3);
    expect(loop.busy(0)).toBe(true);
    expect(loop.busy(1)).toBe(false);
    await expect(generation(loop, 0, 2, 3)).rejects.toThrow("sequence 0 already has work in the decode loop");
    expect(await first).toEqual([100, 100, 100]);
    // Only the first work's tokens went in: its two prompt tokens, then two sampled ones.
    expect(native.batches.flat().flatMap((e) => e.positions)).toEqual([0, 1, 2, 3]);
    expect(loop.busy(0)).toBe(false);
    expect(await generation(loop, 0, 1, 1)).toEqual([100]);
  });

  it("fails the sequences of a step whose decode threw, and goes on with later work", async () => {
    const native = fakeNative(1);
    const loop = new DecodeLoop(native, 512);
    const results = await Promise.allSettled([generation(loop, 0, 2, 2), generation(loop, 1, 2, 2)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect((results[0] as PromiseRejectedResult).reason).toEqual(new Error("decode failed"));
    expect(await generation(loop, 0, 2, 2)).toEqual([100, 100]);
  });

  it("on close, fails waiting work, lets the step under way finish first, and refuses new work", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512, () => 1);
    // (Settled into values at once, so their rejections are never unhandled.)
    const first = generation(loop, 0, 1, 5).catch((error: unknown) => error);
    const second = generation(loop, 1, 1, 5).catch((error: unknown) => error);
    await new Promise((r) => setImmediate(r)); // the first step (sequence 0 alone) is under way
    const reason = new Error("shutting down");
    let closed = false;
    const closing = loop.close(reason).then(() => (closed = true));
    expect(closed).toBe(false);
    await closing;
    // Sequence 1 waited for its turn and fails at once; sequence 0 fails once its step is over.
    expect(native.batches).toEqual([[{ seq: 0, positions: [0], logits: [0] }]]);
    expect(await first).toBe(reason);
    expect(await second).toBe(reason);
    await expect(generation(loop, 2, 1, 1)).rejects.toBe(reason);
  });

  it("times the steps where every sequence fed one token", async () => {
    const steps: number[] = [];
    const loop = new DecodeLoop(fakeNative(), 512, undefined, (size) => steps.push(size));
    await Promise.all([generation(loop, 0, 3, 3), generation(loop, 1, 3, 3)]);
    await new Promise((r) => setImmediate(r)); // the last step is timed once its sequences have their tokens
    // The first step (the prompts) is not a decode step; the two after it are.
    expect(steps).toEqual([2, 2]);
  });
});

describe("cheapestGroup", () => {
  it("decodes everyone together when a bigger step is cheaper per token", () => {
    // Measured here: Q4_K_M, 1 thread (ms per step by tokens in it).
    const stepMs = [0, 4.66, 8.62, 12.35, 15.13, 19.34, 21.42, 24.11, 27.2];
    for (let ready = 1; ready <= 8; ready++) expect(cheapestGroup(stepMs, ready)).toBe(ready);
  });

  it("decodes one at a time when a batch costs more than its tokens alone", () => {
    const stepMs = [0, 4.4, 13.5, 17.5, 18];
    expect(cheapestGroup(stepMs, 2)).toBe(1);
    expect(cheapestGroup(stepMs, 3)).toBe(1);
    expect(cheapestGroup(stepMs, 4)).toBe(4);
  });

  it("keeps the bigger group unless the smaller saves 5% per token", () => {
    expect(cheapestGroup([0, 4.4, 8.6], 2)).toBe(2);
    expect(cheapestGroup([0, 4.0, 8.6], 2)).toBe(1);
  });

  it("skips sizes that were not measured", () => {
    expect(cheapestGroup([0, 4.4, 0, 9], 2)).toBe(1);
    expect(cheapestGroup([0, 0, 0, 9], 3)).toBe(3);
    expect(cheapestGroup([], 5)).toBe(5);
  });
});

describe("DecodeLoop with the prefix cache", () => {
  it("starts new work after the prefix its sequence holds, feeding only the rest, and keeps the cells after", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    loop.prefixCache = true;
    // Turn 1: prompt [0..4], 3 tokens sampled (100s); the first two are fed, the last is not.
    expect(await generation(loop, 0, 5, 3, true)).toEqual([100, 100, 100]);
    expect(loop.heldTokens).toBe(7);
    expect(native.log.filter((l) => l !== "decode")).toEqual(["empty 0"]); // emptied before, not after
    // Turn 2 repeats turn 1 and its answer, then two new tokens.
    let cached = -1;
    await generation(loop, 0, [0, 1, 2, 3, 4, 100, 100, 100, 7, 8], 1, true, (w) => (cached = w.cachedTokens!));
    expect(cached).toBe(7);
    expect(native.log.filter((l) => l !== "decode")).toEqual(["empty 0", "cut 0 at 7"]);
    expect(native.batches.at(-1)).toEqual([{ seq: 0, positions: [7, 8, 9], logits: [2] }]);
  });

  it("always evaluates at least the prompt's last token, even when all of it is held", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    loop.prefixCache = true;
    await generation(loop, 0, 6, 2, true);
    let cached = -1;
    await generation(loop, 0, 6, 1, true, (w) => (cached = w.cachedTokens!));
    expect(cached).toBe(5);
    expect(native.batches.at(-1)).toEqual([{ seq: 0, positions: [5], logits: [0] }]);
  });

  it("chooses the free sequence holding the longest prefix, then the least recently used; without the cache the lowest free", async () => {
    const native = fakeNative();
    const loop = new DecodeLoop(native, 512);
    expect(loop.choose([0, 1, 2], 3)).toBe(0);
    loop.prefixCache = true;
    await generation(loop, 0, [5, 6, 7], 1, true);
    await generation(loop, 1, [0, 1, 2, 3], 1, true);
    await generation(loop, 2, [0, 1, 9], 1, true);
    expect(loop.choose([0, 1, 2, 3, 4], 3)).toBe(1);
    expect(loop.choose([0, 1, 9, 9], 3)).toBe(2);
    // Nothing shared anywhere: the least recently used (0), keeping the recent ones' cells.
    expect(loop.choose([42], 3)).toBe(0);
    // A busy sequence is never chosen.
    const running = generation(loop, 1, [0, 1, 2, 3, 4], 3, true);
    expect(loop.choose([0, 1, 2, 3, 4], 3)).not.toBe(1);
    await running;
    loop.prefixCache = false;
    expect(loop.choose([0, 1, 2, 3], 3)).toBe(0);
  });

  it("empties a sequence whose decode failed, and work without `cache` neither uses nor leaves cells", async () => {
    const native = fakeNative(2);
    const loop = new DecodeLoop(native, 512);
    loop.prefixCache = true;
    await generation(loop, 0, 4, 1, true); // decode 1: fine, cells kept
    await expect(generation(loop, 0, 6, 2, true)).rejects.toThrow("decode failed"); // decode 2 fails
    expect(loop.heldTokens).toBe(0);
    let cached = -1;
    await generation(loop, 0, 4, 1, true, (w) => (cached = w.cachedTokens!));
    expect(cached).toBe(0);
    await generation(loop, 0, 4, 1, false, (w) => (cached = w.cachedTokens!));
    expect(cached).toBe(0);
    expect(loop.heldTokens).toBe(0);
    expect(native.log.filter((l) => l !== "decode").slice(-2)).toEqual(["empty 0", "empty 0"]);
  });
});
