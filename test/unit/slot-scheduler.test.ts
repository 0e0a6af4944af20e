import { describe, expect, it } from "vitest";
import { SlotScheduler } from "../../src/scheduling/slot-scheduler.js";

const never = new AbortController().signal;

describe("SlotScheduler", () => {
  it("hands out the lowest free slot, so running sequences keep consecutive ids", async () => {
    const scheduler = new SlotScheduler(4, 4);
    const leases = await Promise.all([0, 1, 2, 3].map(() => scheduler.acquire(never)));
    expect(leases.map((l) => l.slot)).toEqual([0, 1, 2, 3]);
    leases[3]!.release();
    leases[1]!.release();
    leases[2]!.release();
    // Freed as 3, 1, 2: the next callers get 1, 2, 3 — not the order they were freed in.
    const next = await Promise.all([0, 1, 2].map(() => scheduler.acquire(never)));
    expect(next.map((l) => l.slot)).toEqual([1, 2, 3]);
  });
});
