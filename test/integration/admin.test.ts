import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase, SwapPolicy, type SwapProgress } from "../../src/gen/airavata/v1/admin_pb.js";
import { Health, HealthCheckResponse_ServingStatus as HealthStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { eventually, sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const TOKEN = "test-admin-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
// Long enough (seconds on the tiny model) to still run when a swap switches.
// Calls that must still be running when a swap switches: a swap starts an engine process first
// (3-5 s on the 2-core machines, where the tiny model streams ~500 tokens/s per call), so they run
// near the 4,096-token context (7-8 s there; 1,500 tokens ended before the switch on an AMD one).
const LONG = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 4000 };
// A call that waits in the queue behind them, and is quick once it runs.
const QUEUED = { ...LONG, maxNewTokens: 200 };

let server: TestServer;
let admin: ReturnType<typeof createClient<typeof AdminService>>;
let client: AiravataClient;
let modelsDir: string;

beforeAll(async () => {
  // Downloads of built-in variants must fail fast here, as they would offline.
  process.env.HF_ENDPOINT = "https://airavata-test.invalid";
  modelsDir = mkdtempSync(join(tmpdir(), "airavata-variants-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
  copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
  writeFileSync(join(modelsDir, "corrupt.gguf"), "this is not a model at all".repeat(10));
  const whole = readFileSync(modelPath("q8_0"));
  writeFileSync(join(modelsDir, "truncated.gguf"), whole.subarray(0, Math.floor(whole.length / 2)));
  server = await startTestServer({ modelPath: undefined, variant: "tiny.q4_0", modelsDir, adminToken: TOKEN, contextSize: 4096 });
  admin = createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl }));
  client = new AiravataClient(server.address);
});
afterAll(async () => {
  client.close();
  await server.app.shutdown();
  delete process.env.HF_ENDPOINT;
});

async function swap(variantId: string, policy = SwapPolicy.DRAIN, onEvent?: (e: SwapProgress) => void, drainTimeoutMs = 60_000) {
  const events: SwapProgress[] = [];
  try {
    for await (const e of admin.swapVariant({ variantId, policy, drainTimeoutMs }, auth)) {
      events.push(e);
      onEvent?.(e);
    }
    return { events, error: undefined };
  } catch (error) {
    return { events, error: ConnectError.from(error) };
  }
}

describe("admin auth", () => {
  it("refuses a call without a token (UNAUTHENTICATED) and with a wrong one (PERMISSION_DENIED)", async () => {
    await expect(admin.listVariants({})).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(admin.getStatus({}, { headers: { authorization: "Bearer wrong-token-wrong-token" } })).rejects.toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "the admin token is not valid",
    });
    await expect(
      (async () => {
        for await (const _ of admin.swapVariant({ variantId: "tiny.q8_0" })) void _;
      })(),
    ).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(admin.getStatus({}, { headers: { authorization: "Basic abc" } })).rejects.toMatchObject({
      code: Code.Unauthenticated,
      rawMessage: expect.stringMatching(/must be `Bearer <admin token>`/),
    });
    // Nothing was swapped by the refused call.
    expect((await admin.getStatus({}, auth)).activeVariant).toBe("tiny.q4_0");
  });

  it("without a configured token, admin is disabled and says how to enable it", async () => {
    const other = await startTestServer();
    try {
      const c = createClient(AdminService, createGrpcTransport({ baseUrl: other.baseUrl }));
      await expect(c.getStatus({}, auth)).rejects.toMatchObject({
        code: Code.PermissionDenied,
        rawMessage: expect.stringMatching(/AIRAVATA_ADMIN_TOKEN/),
      });
    } finally {
      await other.app.shutdown();
    }
  });
});

describe("ListVariants and GetStatus", () => {
  it("lists built-in, folder and unusable variants with facts from their GGUF headers", async () => {
    const { variants } = await admin.listVariants({}, auth);
    const byId = Object.fromEntries(variants.map((v) => [v.id, v]));
    expect(byId["q4_k_m"]).toMatchObject({
      source: "hf:mradermacher/Airavata-GGUF/Airavata.Q4_K_M.gguf",
      downloaded: false,
      active: false,
    });
    expect(Object.keys(byId)).toEqual(expect.arrayContaining(["q4_k_s", "q5_k_m", "q6_k", "q8_0", "f16"]));
    const q4 = byId["tiny.q4_0"]!;
    expect(q4).toMatchObject({ downloaded: true, loaded: true, active: true, usable: true, quantization: "Q4_0" });
    expect(Number(q4.parameterCount)).toBeGreaterThan(500_000);
    expect(q4.bitsPerWeight).toBeGreaterThan(4);
    expect(q4.bitsPerWeight).toBeLessThan(byId["tiny.q8_0"]!.bitsPerWeight);
    expect(byId["tiny.q8_0"]).toMatchObject({ quantization: "Q8_0", loaded: false, active: false, usable: true });
    expect(byId["corrupt"]).toMatchObject({ usable: false, unusableReason: expect.stringMatching(/not a valid GGUF/) });
    expect(byId["truncated"]).toMatchObject({ usable: false, unusableReason: expect.stringMatching(/truncated/) });
  });

  it("reports the variant in service, the backend and the slots", async () => {
    const status = await admin.getStatus({}, auth);
    expect(status).toMatchObject({
      activeVariant: "tiny.q4_0",
      backend: "cpu",
      parallelSlots: 2,
      contextSize: 4096,
      swappingTo: "",
    });
    expect(status.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(Number(status.ramTotalBytes)).toBeGreaterThan(0);
  });
});

describe("SwapVariant", () => {
  it("swaps under load with zero failed calls; each call names the variant that served it", async () => {
    const oldPid = server.app.pool.current!.engine.pid!;
    // Two calls take the two slots, a third waits in the old variant's queue.
    const running = [LONG, LONG, QUEUED].map((request) => client.generate(request));
    await new Promise((r) => setTimeout(r, 100));
    let afterSwitch: ReturnType<AiravataClient["generate"]> | undefined;
    // The drain may take as long as the test: with another file decoding beside them, the two long
    // calls ran past 60 s here, and a drain timeout would cancel them.
    const { events, error } = await swap(
      "tiny.q8_0",
      SwapPolicy.DRAIN,
      (e) => {
        if (e.phase === SwapPhase.SWITCHED) afterSwitch = client.generate({ prompt: "The", raw: true, temperature: 0 });
      },
      170_000,
    );
    expect(error).toBeUndefined();
    const phases = [...new Set(events.map((e) => SwapPhase[e.phase]))];
    expect(phases).toEqual(["CHECKING", "LOADING", "WARMING", "SWITCHED", "DRAINING", "RELEASED", "DONE"]);
    expect(events.find((e) => e.phase === SwapPhase.DRAINING)!.inFlight).toBeGreaterThan(0);
    for (const [i, outcome] of (await Promise.all(running)).entries()) {
      expect(outcome.codeName).toBe("OK");
      expect(outcome.trailers["airavata-variant"]).toBe("tiny.q4_0");
      expect(outcome.trailers["airavata-generated-tokens"]).toBe(i < 2 ? "4000" : "200");
    }
    const next = await afterSwitch!;
    expect(next.codeName).toBe("OK");
    expect(next.trailers["airavata-variant"]).toBe("tiny.q8_0");
    // The new engine starts with nothing cached (its warm-up caches nothing).
    expect(next.trailers["airavata-cached-prompt-tokens"]).toBe("0");
    expect((await admin.getStatus({}, auth)).activeVariant).toBe("tiny.q8_0");
    // The old engine process is gone, so its memory is given back.
    expect(() => process.kill(oldPid, 0)).toThrow();
    const { variants } = await admin.listVariants({}, auth);
    expect(variants.find((v) => v.id === "tiny.q4_0")).toMatchObject({ loaded: false, active: false });
    expect(await sample(server.baseUrl, "airavata_active_variant_info", { variant: "tiny.q8_0" })).toBe(1);
    expect(await sample(server.baseUrl, "airavata_variant_swaps_total", { result: "ok" })).toBeGreaterThanOrEqual(1);
    // Two 4,000-token calls (long enough to be running when the new engine is up) took 39 s alone on
    // a 2-core AMD EPYC, and past 60 s with another file decoding beside them.
  }, 180_000);

  it("under a steady stream of calls, swaps A → B → A fail none of them", async () => {
    const outcomes: { code: string; variant: string | undefined }[] = [];
    let swapping = true;
    // Four clients calling back to back, as a load tool would, for as long as the swaps take.
    const workers = [1, 2, 3, 4].map(async (n) => {
      const c = new AiravataClient(server.address);
      while (swapping) {
        const o = await c.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 20 + n * 10 });
        outcomes.push({ code: o.codeName, variant: o.trailers["airavata-variant"] });
      }
      c.close();
    });
    const start = (await admin.getStatus({}, auth)).activeVariant;
    const other = start === "tiny.q4_0" ? "tiny.q8_0" : "tiny.q4_0";
    for (const id of [other, start]) {
      const { error } = await swap(id);
      expect(error).toBeUndefined();
    }
    swapping = false;
    await Promise.all(workers);
    expect(outcomes.length).toBeGreaterThan(20);
    expect(outcomes.filter((o) => o.code !== "OK")).toEqual([]);
    expect(new Set(outcomes.map((o) => o.variant))).toEqual(new Set([start, other]));
  });

  it("with the CANCEL policy, running calls end CANCELLED with their trailers; new ones run on the new variant", async () => {
    const running = [1, 2].map(() => client.generate(LONG));
    await new Promise((r) => setTimeout(r, 100));
    const { error } = await swap("tiny.q4_0", SwapPolicy.CANCEL);
    expect(error).toBeUndefined();
    for (const outcome of await Promise.all(running)) {
      expect(outcome.codeName).toBe("CANCELLED");
      expect(outcome.message).toMatch(/variant swap to "tiny.q4_0" \(policy CANCEL\)/);
      expect(outcome.trailers["airavata-finish-reason"]).toBe("cancelled");
      expect(outcome.trailers["airavata-variant"]).toBe("tiny.q8_0");
    }
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.trailers["airavata-variant"]).toBe("tiny.q4_0");
  });

  it.each([
    ["corrupt", Code.FailedPrecondition, /variant "corrupt" cannot be used: not a valid GGUF/],
    ["truncated", Code.FailedPrecondition, /truncated/],
    ["nope", Code.NotFound, /no variant "nope"; known variants: .*tiny\.q8_0/],
    ["q8_0", Code.Unavailable, /not downloaded .* airavata-test\.invalid cannot be reached/],
    ["tiny.q4_0", Code.FailedPrecondition, /already in service/],
  ])("a swap to %s fails with its code, and the variant in service keeps serving", async (id, code, message) => {
    const { error } = await swap(id);
    expect(error).toMatchObject({ code, rawMessage: expect.stringMatching(message) });
    expect((await admin.getStatus({}, auth)).activeVariant).toBe("tiny.q4_0");
    const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(outcome.text).toBe("end of story🙏");
    expect(outcome.trailers["airavata-variant"]).toBe("tiny.q4_0");
  });

  it("refuses a second swap while one runs", async () => {
    let second: Promise<{ error: ConnectError | undefined }> | undefined;
    const first = await swap("tiny.q8_0", SwapPolicy.DRAIN, (e) => {
      if (e.phase === SwapPhase.CHECKING) second = swap("tiny.q4_0");
    });
    expect(first.error).toBeUndefined();
    expect((await second!).error).toMatchObject({
      code: Code.FailedPrecondition,
      rawMessage: expect.stringMatching(/in progress/),
    });
    const failed = await eventually(() => sample(server.baseUrl, "airavata_variant_swaps_total", { result: "failed" }), 1);
    expect(failed).toBeGreaterThanOrEqual(1);
  });
});

describe("Drain", () => {
  it("turns health NOT_SERVING while calls are still served, and back with resume", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    expect(await admin.drain({}, auth)).toMatchObject({ draining: true, inFlight: 0 });
    expect((await health.check({ service: "" })).status).toBe(HealthStatus.NOT_SERVING);
    expect((await health.check({ service: "airavata.v1.GenerationService" })).status).toBe(HealthStatus.NOT_SERVING);
    expect((await admin.getStatus({}, auth)).draining).toBe(true);
    // A balancer takes a moment to notice: what arrives meanwhile is served.
    const served = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(served.codeName).toBe("OK");
    expect(await admin.drain({ resume: true }, auth)).toMatchObject({ draining: false });
    expect((await health.check({ service: "" })).status).toBe(HealthStatus.SERVING);
    expect((await admin.getStatus({}, auth)).draining).toBe(false);
    await expect(admin.drain({})).rejects.toMatchObject({ code: Code.Unauthenticated });
  });
});

describe("a cancelled SwapVariant", () => {
  it("stops before its switch: the new engine is ended, the old variant serves on, the next swap runs", async () => {
    const { activeVariant: serving } = await admin.getStatus({}, auth);
    const target = serving === "tiny.q4_0" ? "tiny.q8_0" : "tiny.q4_0";
    const targetFile = join(modelsDir, `${target}.gguf`);
    const controller = new AbortController();
    const phases: string[] = [];
    const cancelled = (async () => {
      for await (const e of admin.swapVariant({ variantId: target }, { ...auth, signal: controller.signal })) {
        phases.push(SwapPhase[e.phase]);
        // Starting an engine takes seconds here: the cancel reaches the server long before the switch.
        if (e.phase === SwapPhase.CHECKING) controller.abort();
      }
    })();
    await expect(cancelled).rejects.toMatchObject({ code: Code.Canceled });
    expect(phases).toEqual(["CHECKING"]);
    // The server's swap ends too, without switching, and no engine process is left on the target's file.
    const engines = () => spawnSync("pgrep", ["-f", targetFile], { encoding: "utf8" }).stdout.trim();
    const settled = async () => (await admin.getStatus({}, auth)).swappingTo === "" && engines() === "";
    for (let tries = 0; tries < 100 && !(await settled()); tries++) await new Promise((r) => setTimeout(r, 50));
    expect(await admin.getStatus({}, auth)).toMatchObject({ activeVariant: serving, swappingTo: "" });
    expect(engines()).toBe("");
    const { variants } = await admin.listVariants({}, auth);
    expect(variants.find((v) => v.id === target)).toMatchObject({ loaded: false, active: false });
    const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(outcome.trailers["airavata-variant"]).toBe(serving);
    // Nothing is left half-done: a swap to the same target runs through.
    const next = await swap(target);
    expect(next.error).toBeUndefined();
    expect((await admin.getStatus({}, auth)).activeVariant).toBe(target);
  }, 60_000);
});

describe("the memory check before a swap", () => {
  it("refuses a swap whose two variants exceed the budget, with the numbers; with downtime allowed it succeeds", async () => {
    const dir = mkdtempSync(join(tmpdir(), "airavata-budget-"));
    copyFileSync(modelPath("q4_0"), join(dir, "tiny.q4_0.gguf"));
    copyFileSync(modelPath("q8_0"), join(dir, "tiny.q8_0.gguf"));
    const base = { modelPath: undefined, variant: "tiny.q4_0", modelsDir: dir, adminToken: TOKEN, contextSize: 1024 };
    // What one variant needs here, by the service's own estimate; room for one and a half.
    const probe = await startTestServer(base);
    const needs = probe.app.pool.current!.needs.ramBytes;
    await probe.app.shutdown();
    const budgeted = await startTestServer({ ...base, memoryBudget: Math.round(needs * 1.5) });
    try {
      const c = createClient(AdminService, createGrpcTransport({ baseUrl: budgeted.baseUrl }));
      const run = async (allowDowntime: boolean) => {
        const events: SwapProgress[] = [];
        try {
          for await (const e of c.swapVariant({ variantId: "tiny.q8_0", allowDowntime }, auth)) events.push(e);
          return { events, error: undefined };
        } catch (error) {
          return { events, error: ConnectError.from(error) };
        }
      };
      const refused = await run(false);
      expect(refused.error).toMatchObject({
        code: Code.FailedPrecondition,
        rawMessage: expect.stringMatching(
          /variant "tiny\.q8_0" needs about [\d.]+ MiB of RAM beside "tiny\.q4_0"'s [\d.]+ MiB: [\d.]+ MiB together, over the memory budget of [\d.]+ MiB; swap with allow_downtime/,
        ),
      });
      expect((await c.getStatus({}, auth)).activeVariant).toBe("tiny.q4_0");
      const health = createClient(Health, createGrpcTransport({ baseUrl: budgeted.baseUrl }));
      const seen: HealthStatus[] = [];
      const watching = (async () => {
        for await (const { status } of health.watch({ service: "" })) {
          seen.push(status);
          if (seen.length >= 3) break;
        }
      })();
      const withDowntime = await run(true);
      expect(withDowntime.error).toBeUndefined();
      expect([...new Set(withDowntime.events.map((e) => SwapPhase[e.phase]))]).toEqual([
        "CHECKING",
        "DRAINING",
        "RELEASED",
        "LOADING",
        "WARMING",
        "SWITCHED",
        "DONE",
      ]);
      await watching;
      expect(seen).toEqual([HealthStatus.SERVING, HealthStatus.NOT_SERVING, HealthStatus.SERVING]);
      expect((await c.getStatus({}, auth)).activeVariant).toBe("tiny.q8_0");
    } finally {
      await budgeted.app.shutdown();
    }
  });
});
