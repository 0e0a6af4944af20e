import { describe, expect, it } from "vitest";
import { deadlineMarginMs } from "../../src/services/generation-service.js";
import { untilAborted } from "../../src/util/until-aborted.js";

describe("the deadline margin", () => {
  it("is the floor for short calls, 10% of the call up to 100 ms for long ones, plus the round trip", () => {
    expect(deadlineMarginMs(20, 30)).toBe(30);
    expect(deadlineMarginMs(50, 30)).toBe(30);
    expect(deadlineMarginMs(500, 30)).toBe(50);
    expect(deadlineMarginMs(60_000, 30)).toBe(100);
    expect(deadlineMarginMs(50, 30, 7.5)).toBe(37.5);
    expect(deadlineMarginMs(50, 0)).toBe(5);
  });
});

describe("untilAborted", () => {
  it("throws the signal's reason at once, without waiting for the next value; the source is closed after", async () => {
    let closed = false;
    let release!: () => void;
    const stuck = new Promise<void>((resolve) => (release = resolve));
    async function* source() {
      try {
        yield 1;
        await stuck; // an engine that has not answered yet
        yield 2;
      } finally {
        closed = true;
      }
    }
    const controller = new AbortController();
    const seen: number[] = [];
    const reason = new Error("deadline");
    const consumed = (async () => {
      for await (const value of untilAborted(source(), controller.signal)) seen.push(value);
    })();
    await new Promise((r) => setTimeout(r, 10));
    controller.abort(reason);
    await expect(consumed).rejects.toBe(reason);
    expect(seen).toEqual([1]);
    // The source finishes its pending step, then its cleanup runs.
    expect(closed).toBe(false);
    release();
    await new Promise((r) => setTimeout(r, 10));
    expect(closed).toBe(true);
  });

  it("passes every value through and ends with the source when the signal never fires", async () => {
    async function* source() {
      yield* [1, 2, 3];
    }
    const seen: number[] = [];
    for await (const value of untilAborted(source(), new AbortController().signal)) seen.push(value);
    expect(seen).toEqual([1, 2, 3]);
  });
});
