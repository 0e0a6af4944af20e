import { describe, expect, it } from "vitest";
import { cheapestGroup, DecodeGate } from "../../src/engine/decode-gate.js";

const later = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A member of the steps: enters with its first token, then comes back after
 * `backAfterMs[i]` for each of its next tokens; records when each release came.
 */
async function member(gate: DecodeGate, name: string, backAfterMs: number[], log: string[], order = 0): Promise<void> {
  gate.enter();
  for (const ms of backAfterMs) {
    await later(ms);
    await gate.turn(order);
    log.push(name);
  }
  await later(1);
  gate.leave();
}

describe("DecodeGate", () => {
  it("releases every waiting generation together once the slowest is back", async () => {
    const steps: number[] = [];
    const gate = new DecodeGate(undefined, (size) => steps.push(size));
    const log: string[] = [];
    // Three sequences whose sampling ends 0, 5 and 15 ms after the step: all three go out together.
    await Promise.all([member(gate, "a", [0, 0], log), member(gate, "b", [5, 5], log), member(gate, "c", [15, 15], log)]);
    expect(steps).toEqual([3, 3]);
    // Each release lets all three go in one turn: the log shows them in rounds of three.
    expect(log.slice(0, 3).sort()).toEqual(["a", "b", "c"]);
    expect(log.slice(3).sort()).toEqual(["a", "b", "c"]);
  });

  it("releases a smaller group when told to, the longest waiting first", async () => {
    const steps: number[] = [];
    const gate = new DecodeGate(
      () => 1,
      (size) => steps.push(size),
    );
    const log: string[] = [];
    await Promise.all([member(gate, "a", [0, 0], log), member(gate, "b", [0, 0], log)]);
    expect(steps.every((s) => s === 1)).toBe(true);
    // One at a time, alternating: nobody is served twice while the other waits.
    expect(log).toEqual(["a", "b", "a", "b"]);
  });

  it("lets a group go in the order of its sequence ids, whatever order its members came back in", async () => {
    // llama.cpp decodes a batch in one pass only over consecutive ascending sequence ids.
    const gate = new DecodeGate();
    const log: string[] = [];
    await Promise.all([
      member(gate, "seq2", [0, 0], log, 2),
      member(gate, "seq0", [10, 10], log, 0),
      member(gate, "seq1", [5, 5], log, 1),
    ]);
    expect(log).toEqual(["seq0", "seq1", "seq2", "seq0", "seq1", "seq2"]);
  });

  it("lets the others go on when one leaves", async () => {
    const gate = new DecodeGate();
    const log: string[] = [];
    await Promise.all([member(gate, "a", [0, 0, 0], log), member(gate, "short", [], log)]);
    expect(log).toEqual(["a", "a", "a"]);
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
