import { describe, expect, it } from "vitest";
import { type ThreadDecision, ThreadTuner } from "../../src/engine/child/thread-tuner.js";

/** Runs `steps` decode steps of `size` sequences on a machine whose step time is `ms(threads)`. */
function simulate(tuner: ThreadTuner, steps: number, ms: (threads: number) => number, size = 1): number[] {
  const ran: number[] = [];
  for (let i = 0; i < steps; i++) {
    ran.push(tuner.threads);
    // A little noise, as real steps have.
    tuner.step(size, ms(tuner.threads) * (1 + 0.02 * Math.sin(i)));
  }
  return ran;
}

function tuner(start = 1, candidates = [1, 2]) {
  const applied: number[] = [];
  const decisions: ThreadDecision[] = [];
  const t = new ThreadTuner(
    { candidates, start, settleSteps: 16, firstSettleSteps: 16, probeSteps: 8, reprobeSteps: 100 },
    (n) => applied.push(n),
    (d) => decisions.push(d),
  );
  return { t, applied, decisions };
}

describe("the thread tuner", () => {
  it("moves to all the cores where they decode faster under the real load (the Intel machine: 7B, 1.8x)", () => {
    const { t, applied, decisions } = tuner();
    simulate(t, 40, (threads) => (threads === 2 ? 140 : 250));
    expect(t.current).toBe(2);
    expect(applied.at(-1)).toBe(2);
    expect(decisions[0]).toMatchObject({ threads: 2, previous: 1, size: 1, outcome: "switched" });
    expect(decisions[0]!.stepMs[1]).toBeCloseTo(250, -1);
    expect(decisions[0]!.stepMs[2]).toBeCloseTo(140, -1);
    // Later probes of one thread find it slower and keep two.
    simulate(t, 400, (threads) => (threads === 2 ? 140 : 250));
    expect(t.current).toBe(2);
    expect(decisions.length).toBeGreaterThan(1);
    expect(decisions.slice(1).every((d) => d.outcome !== "switched" && d.threads === 2)).toBe(true);
  });

  it("stays put, and cuts the probe short, where all the cores collapse in service (the AMD machine: 0.24x)", () => {
    const { t, decisions } = tuner();
    const ran = simulate(t, 2000, (threads) => (threads === 2 ? 16 : 4));
    expect(t.current).toBe(1);
    expect(decisions.length).toBeGreaterThan(1);
    expect(decisions.every((d) => d.outcome === "cut" && d.threads === 1)).toBe(true);
    // Each probe costs four slow steps (one to meet the change, three to see it), and they grow rarer.
    const slow = ran.filter((threads) => threads === 2).length;
    expect(slow).toBe(4 * decisions.length);
    expect(decisions.length).toBeLessThanOrEqual(5);
  });

  it("keeps the current count when the other is within the margin", () => {
    const { t, decisions } = tuner();
    simulate(t, 40, (threads) => (threads === 2 ? 9.9 : 10));
    expect(t.current).toBe(1);
    expect(decisions[0]).toMatchObject({ threads: 1, outcome: "kept" });
  });

  it("decides nothing from steps of different sizes, and tries again soon", () => {
    const { t, decisions } = tuner();
    for (let i = 0; i < 16; i++) t.step(1, 10);
    // The probe meets a batch of 4 only.
    for (let i = 0; i < 9; i++) t.step(4, 5);
    expect(decisions).toEqual([]);
    expect(t.threads).toBe(1);
    simulate(t, 30, (threads) => (threads === 2 ? 6 : 10));
    expect(t.current).toBe(2);
  });

  it("never probes with one candidate", () => {
    const { t, applied } = tuner(1, [1]);
    simulate(t, 500, () => 10);
    expect(applied).toEqual([]);
    expect(t.threads).toBe(1);
  });
});
