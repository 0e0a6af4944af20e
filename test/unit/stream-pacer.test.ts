import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { StreamPacer } from "../../src/engine/child/stream-pacer.js";
import { AUTO_STREAM_INTERVAL, parseStreamInterval, type StreamInterval } from "../../src/generation.js";
import type { Emission } from "../../src/engine/child/text-stream.js";

/** One token's release: its id, and its text (possibly none, for part of a character). */
const piece = (id: number, text = `t${id}`): Emission => ({ text, tokens: [id] });

/** A pacer on the fake clock, recording each message with the time it left. */
function paced(interval: StreamInterval) {
  const sent: { at: number; tokens: number[]; text: string }[] = [];
  const start = Date.now();
  const pacer = new StreamPacer(interval, (e) => sent.push({ at: Date.now() - start, tokens: e.tokens, text: e.text }), Date.now);
  return { pacer, sent };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("StreamPacer", () => {
  it("by token count: the first alone, then N at a time, the rest left for the end", () => {
    const { pacer, sent } = paced({ tokens: 3 });
    for (let id = 0; id < 9; id++) pacer.push(piece(id));
    expect(sent.map((m) => m.tokens)).toEqual([[0], [1, 2, 3], [4, 5, 6]]);
    expect(pacer.end()).toEqual({ text: "t7t8", tokens: [7, 8] });
  });

  it("every token alone at 1, and a release with nothing in it sends nothing", () => {
    const { pacer, sent } = paced({ tokens: 1 });
    pacer.push(piece(0));
    pacer.push({ text: "", tokens: [] });
    pacer.push(piece(1, ""));
    expect(sent.map((m) => m.tokens)).toEqual([[0], [1]]);
    expect(pacer.end()).toEqual({ text: "", tokens: [] });
  });

  it("by time, with tokens every 6 ms and 20 ms: the first at once, then one message per 20 ms, none held longer", () => {
    const { pacer, sent } = paced({ ms: 20 });
    for (let id = 0; id < 10; id++) {
      pacer.push(piece(id));
      vi.advanceTimersByTime(6);
    }
    // Tokens at 0, 6, 12, …, 54 ms; messages at 0, then 20 (6, 12, 18), 40 (24, 30, 36), 60 (42, 48, 54).
    expect(sent).toEqual([
      { at: 0, tokens: [0], text: "t0" },
      { at: 20, tokens: [1, 2, 3], text: "t1t2t3" },
      { at: 40, tokens: [4, 5, 6], text: "t4t5t6" },
      { at: 60, tokens: [7, 8, 9], text: "t7t8t9" },
    ]);
    expect(pacer.end()).toEqual({ text: "", tokens: [] });
  });

  it("by time, a decode slower than the interval sends every token as it comes", () => {
    const { pacer, sent } = paced({ ms: 20 });
    for (let id = 0; id < 4; id++) {
      pacer.push(piece(id));
      vi.advanceTimersByTime(25);
    }
    expect(sent.map((m) => [m.at, m.tokens])).toEqual([
      [0, [0]],
      [25, [1]],
      [50, [2]],
      [75, [3]],
    ]);
  });

  it.each([
    ["by time (20ms)", { ms: 20 }, 20],
    ["by count held at most 50 ms (4/50ms)", { tokens: 4, holdMs: 50 }, 55],
  ] satisfies [string, StreamInterval, number][])(
    "%s, a token held when the decode stalls leaves when its time is up, not with the next token",
    (_, interval, releasedAt) => {
      const { pacer, sent } = paced(interval);
      pacer.push(piece(0));
      vi.advanceTimersByTime(5);
      pacer.push(piece(1));
      // The next decode step takes a second (another call's long prompt in the batch, say).
      vi.advanceTimersByTime(1000);
      pacer.push(piece(2));
      expect(sent.map((m) => [m.at, m.tokens])).toEqual([
        [0, [0]],
        [releasedAt, [1]],
        [1005, [2]],
      ]);
      // After the stall the last gap is long, so the token that ended it was not held either.
      expect(pacer.end().tokens).toEqual([]);
    },
  );

  it("by time, nothing leaves after the end: what was held is the end's", () => {
    const { pacer, sent } = paced({ ms: 20 });
    pacer.push(piece(0));
    pacer.push(piece(1));
    expect(pacer.end()).toEqual({ text: "t1", tokens: [1] });
    vi.advanceTimersByTime(100);
    expect(sent.map((m) => m.tokens)).toEqual([[0]]);
  });
});

describe("StreamPacer, up to N tokens held at most T ms (4/50ms)", () => {
  /** Pushes `count` tokens `gapMs` apart (the first at 0) and returns what left, with when. */
  function run(gapMs: number, count: number) {
    const { pacer, sent } = paced({ tokens: 4, holdMs: 50 });
    for (let id = 0; id < count; id++) {
      if (id > 0) vi.advanceTimersByTime(gapMs);
      pacer.push(piece(id));
    }
    return { sent: sent.map((m) => [m.at, m.tokens]), rest: pacer.end().tokens };
  }

  it("a fast decode (a token every 6 ms) goes 4 tokens a message, the first alone", () => {
    expect(run(6, 10)).toEqual({
      sent: [
        [0, [0]],
        [24, [1, 2, 3, 4]],
        [48, [5, 6, 7, 8]],
      ],
      rest: [9],
    });
  });

  it("a decode slower than the hold time (a 7B on a CPU) sends every token the moment it comes", () => {
    expect(run(140, 4).sent).toEqual([
      [0, [0]],
      [140, [1]],
      [280, [2]],
      [420, [3]],
    ]);
  });

  it("a token every 25 ms (streams sharing the decode) goes two a message, none waiting on a timer", () => {
    expect(run(25, 7)).toEqual({
      sent: [
        [0, [0]],
        [50, [1, 2]],
        [100, [3, 4]],
        [150, [5, 6]],
      ],
      rest: [],
    });
  });
});

describe("parseStreamInterval", () => {
  it("reads auto, a token count, a count with a hold time or a time in ms", () => {
    expect(parseStreamInterval("auto")).toEqual(AUTO_STREAM_INTERVAL);
    expect(AUTO_STREAM_INTERVAL).toEqual({ tokens: 8, holdMs: 50 });
    expect(parseStreamInterval("4")).toEqual({ tokens: 4 });
    expect(parseStreamInterval("8/30ms")).toEqual({ tokens: 8, holdMs: 30 });
    expect(parseStreamInterval("8/30")).toBeUndefined();
    expect(parseStreamInterval(" 20ms ")).toEqual({ ms: 20 });
    expect(parseStreamInterval("20 s")).toBeUndefined();
    expect(parseStreamInterval("fast")).toBeUndefined();
  });
});
