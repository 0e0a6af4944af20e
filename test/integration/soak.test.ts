import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runSoak } from "../../harness/soak.js";
import { SHAPES, writeSyntheticModel } from "../../src/synthetic/model.js";
import { startServerProcess, type ServerProcess } from "../helpers/server.js";

const TOKEN = randomBytes(16).toString("hex");
let server: ServerProcess;

beforeAll(async () => {
  const modelsDir = mkdtempSync(join(tmpdir(), "airavata-soak-test-"));
  for (const type of ["q4_0", "q8_0"] as const) {
    writeSyntheticModel({
      path: join(modelsDir, `tiny.${type}.gguf`),
      shape: SHAPES.tiny,
      type,
      name: "airavata-synthetic-tiny",
    });
  }
  server = await startServerProcess(
    ["--models-dir", modelsDir, "--variant", "tiny.q4_0", "--threads", "1", "--parallel", "4", "--max-queue", "16"],
    { AIRAVATA_ADMIN_TOKEN: TOKEN, AIRAVATA_MODEL: "", HF_ENDPOINT: "https://soak.invalid" },
  );
  while (!server.logs.some((l) => String(l.msg).startsWith("model loaded"))) await new Promise((r) => setTimeout(r, 50));
});
afterAll(async () => {
  server.child.kill("SIGTERM");
  expect(await server.exited).toBe(0);
});

describe("a short soak (`npm run soak -- --minutes 30` for the long one)", () => {
  it("two minutes of mixed calls, swaps and engine kills: every call ends as its scenario allows, none hangs, nothing leaks", async () => {
    const report = await runSoak({
      address: `127.0.0.1:${server.port}`,
      adminToken: TOKEN,
      variants: ["tiny.q4_0", "tiny.q8_0"],
      durationMs: 110_000,
      workers: 4,
      swapEveryMs: 20_000,
      killEngineEveryMs: 45_000,
      serverPid: server.child.pid!,
      seed: 3,
    });
    expect(report.unexpected).toEqual([]);
    expect(report.hung).toBe(0);
    expect(report.totalCalls).toBeGreaterThan(500);
    expect(report.swaps.failed).toBe(0);
    expect(report.swaps.done).toBeGreaterThanOrEqual(3);
    expect(report.faults.injected).toBeGreaterThanOrEqual(2);
    expect(report.faults.survived).toBe(report.faults.injected);
    expect(report.end).toEqual({ running: 0, waiting: 0 });
    // Every scenario ran, and each ended at least once the way it is meant to.
    expect(report.calls["generate"]?.["OK"]).toBeGreaterThan(0);
    expect(report.calls["cancel-decode"]?.["CANCELLED"]).toBeGreaterThan(0);
    expect(report.calls["short-deadline"]?.["DEADLINE_EXCEEDED"]).toBeGreaterThan(0);
    expect(report.calls["tokenize"]?.["OK"]).toBeGreaterThan(0);
    expect(report.calls["admin-read"]?.["OK"]).toBeGreaterThan(0);
    // No descriptor leak in the server: its open files at the end within a few of the start.
    const first = report.samples[0]!;
    const last = report.samples.at(-1)!;
    expect(last.serverFds).toBeLessThanOrEqual(first.serverFds + 8);
  }, 180_000);
});
