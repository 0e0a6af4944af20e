/**
 * Several variants in service at once (design §10): per-request variant,
 * weighted and sticky routing, load and unload at runtime, a crash of one
 * engine, the memory check. Real engine processes on the project's tiny
 * models, over real sockets.
 */
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase, SwapPolicy, type SwapProgress } from "../../src/gen/airavata/v1/admin_pb.js";
import { GenerationService } from "../../src/gen/airavata/v1/generation_pb.js";
import { Health, HealthCheckResponse_ServingStatus as HealthStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { startServerProcess, startTestServer, type TestServer } from "../helpers/server.js";

const TOKEN = "test-admin-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
const A = "tiny.q4_0";
const B = "tiny.q8_0";
const PROMPTS = ["The", "नमस्ते", "Once upon a time"];
const greedy = (prompt: string) => ({ prompt, raw: true, temperature: 0, maxNewTokens: 24 });

let modelsDir: string;
let server: TestServer;
let admin: ReturnType<typeof createClient<typeof AdminService>>;
let client: AiravataClient;
let generation: ReturnType<typeof createClient<typeof GenerationService>>;

beforeAll(async () => {
  process.env.HF_ENDPOINT = "https://airavata-test.invalid";
  modelsDir = mkdtempSync(join(tmpdir(), "airavata-pool-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, `${A}.gguf`));
  copyFileSync(modelPath("q8_0"), join(modelsDir, `${B}.gguf`));
  server = await startTestServer({
    modelPath: undefined,
    variants: [
      { id: A, weight: 100 },
      { id: B, weight: 0 },
    ],
    modelsDir,
    adminToken: TOKEN,
    contextSize: 4096,
  });
  admin = createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl }));
  client = new AiravataClient(server.address);
  generation = createClient(GenerationService, createGrpcTransport({ baseUrl: server.baseUrl }));
});
afterAll(async () => {
  client.close();
  await server.app.shutdown();
  delete process.env.HF_ENDPOINT;
});

/** Runs an admin stream (load, unload) to its end: its messages and the error it ended with. */
async function run(stream: AsyncIterable<SwapProgress>) {
  const events: SwapProgress[] = [];
  try {
    for await (const e of stream) events.push(e);
    return { events, error: undefined };
  } catch (error) {
    return { events, error: ConnectError.from(error) };
  }
}

/** The greedy texts of PROMPTS from a server serving `id` alone. */
async function soloTexts(id: string): Promise<string[]> {
  const solo = await startTestServer({ modelPath: undefined, variant: id, modelsDir, contextSize: 4096 });
  const c = new AiravataClient(solo.address);
  try {
    return await Promise.all(PROMPTS.map(async (p) => (await c.generate(greedy(p))).text));
  } finally {
    c.close();
    await solo.app.shutdown();
  }
}

describe("two variants loaded", () => {
  it("a call that names a variant is served by it, with the text that variant gives alone", async () => {
    for (const id of [A, B]) {
      const expected = await soloTexts(id);
      for (const [i, prompt] of PROMPTS.entries()) {
        const outcome = await client.generate({ ...greedy(prompt), variant: id });
        expect(outcome.codeName).toBe("OK");
        expect(outcome.trailers["airavata-variant"]).toBe(id);
        expect(outcome.text).toBe(expected[i]);
      }
      const tokens = await generation.tokenize({ text: "नमस्ते दुनिया", variant: id });
      expect(tokens.variant).toBe(id);
    }
    // Named by no call, Tokenize is routed too.
    expect((await generation.tokenize({ text: "नमस्ते" })).variant).toBe(A);
    // The two quantizations really differ somewhere, so the check above can tell them apart.
    const a = await Promise.all(PROMPTS.map(async (p) => (await client.generate({ ...greedy(p), variant: A })).text));
    const b = await Promise.all(PROMPTS.map(async (p) => (await client.generate({ ...greedy(p), variant: B })).text));
    expect(a).not.toEqual(b);
  }, 120_000);

  it("GetStatus lists both with their weights and calls; health has a name per variant", async () => {
    const status = await admin.getStatus({}, auth);
    expect(status.activeVariant).toBe(A);
    expect(status.loadedVariants.map((v) => [v.variantId, v.weight, v.serving])).toEqual([
      [A, 100, true],
      [B, 0, true],
    ]);
    expect(status.loadedVariants.every((v) => v.calls > 0n)).toBe(true);
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    for (const id of [A, B]) {
      expect((await health.check({ service: `airavata.v1.GenerationService/${id}` })).status).toBe(HealthStatus.SERVING);
    }
    expect((await health.check({ service: "" })).status).toBe(HealthStatus.SERVING);
    expect(await sample(server.baseUrl, "airavata_variant_routing_weight", { variant: A })).toBe(100);
    expect(await sample(server.baseUrl, "airavata_variant_routing_weight", { variant: B })).toBe(0);
  });

  it("weights 100/0 send every call to one; 50/50 over 200 calls falls in the binomial 99.9% band", async () => {
    const routed = async (n: number, metadata: Record<string, string> = {}) => {
      const counts: Record<string, number> = { [A]: 0, [B]: 0 };
      for (let i = 0; i < n; i++) {
        const o = await client.generate({ prompt: "The", raw: true, temperature: 0, maxNewTokens: 1 }, undefined, { metadata });
        expect(o.codeName).toBe("OK");
        counts[o.trailers["airavata-variant"]!]!++;
      }
      return counts;
    };
    expect(await admin.setRouting({ weights: { [B]: 100 } }, auth)).toMatchObject({ weights: { [A]: 0, [B]: 100 } });
    expect(await routed(30)).toEqual({ [A]: 0, [B]: 30 });
    await admin.setRouting({ weights: { [A]: 50, [B]: 50 } }, auth);
    const before = await admin.getStatus({}, auth);
    const split = await routed(200);
    // 200 × 0.5 ± 3.29 standard deviations (√50 ≈ 7.07): 77 to 123.
    expect(split[A]).toBeGreaterThanOrEqual(77);
    expect(split[A]).toBeLessThanOrEqual(123);
    // GetStatus counts the calls per variant.
    const after = await admin.getStatus({}, auth);
    const calls = (s: typeof after, id: string) => Number(s.loadedVariants.find((v) => v.variantId === id)!.calls);
    expect(calls(after, A) - calls(before, A)).toBe(split[A]);
    expect(calls(after, B) - calls(before, B)).toBe(split[B]);
  }, 120_000);

  it("a sticky key keeps its variant across 50 calls while the weights stay", async () => {
    await admin.setRouting({ weights: { [A]: 50, [B]: 50 } }, auth);
    const seen = new Map<string, Set<string>>();
    for (const key of ["user-1", "user-2", "user-3", "user-4"]) {
      const variants = new Set<string>();
      for (let i = 0; i < (key === "user-1" ? 50 : 10); i++) {
        const o = await client.generate({ prompt: "The", raw: true, temperature: 0, maxNewTokens: 1 }, undefined, {
          metadata: { "airavata-routing-key": key },
        });
        variants.add(o.trailers["airavata-variant"]!);
      }
      seen.set(key, variants);
    }
    for (const variants of seen.values()) expect(variants.size).toBe(1);
  }, 120_000);

  it("every refusal has its code and message, and changes nothing", async () => {
    await admin.setRouting({ weights: { [A]: 90, [B]: 10 } }, auth);
    const unknown = await client.generate({ prompt: "The", variant: "nope" });
    expect(unknown.codeName).toBe("NOT_FOUND");
    expect(unknown.message).toMatch(/no variant "nope"; known variants: /);
    copyFileSync(modelPath("q4_0"), join(modelsDir, "spare.q4_0.gguf"));
    const notLoaded = await client.generate({ prompt: "The", variant: "spare.q4_0" });
    expect(notLoaded.codeName).toBe("FAILED_PRECONDITION");
    expect(notLoaded.message).toMatch(/variant "spare\.q4_0" is not loaded .*load it with the admin LoadVariant call/);
    await expect(generation.tokenize({ text: "x", variant: "spare.q4_0" })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
    });
    for (const [weights, message] of [
      [{ [A]: 50, "spare.q4_0": 50 }, /weights name "spare\.q4_0", which is not loaded/],
      [{ [A]: 0, [B]: 0 }, /the weights are all zero/],
      [{}, /the weights are all zero/],
    ] as const) {
      await expect(admin.setRouting({ weights }, auth)).rejects.toMatchObject({
        code: Code.InvalidArgument,
        rawMessage: expect.stringMatching(message),
      });
    }
    // The old policy stays.
    expect((await admin.getStatus({}, auth)).loadedVariants.map((v) => v.weight)).toEqual([90, 10]);
    const again = await run(admin.loadVariant({ variantId: B }, auth));
    expect(again.error).toMatchObject({ code: Code.FailedPrecondition, rawMessage: `variant "${B}" is already loaded` });
    const missing = await run(admin.loadVariant({ variantId: "nope" }, auth));
    expect(missing.error).toMatchObject({ code: Code.NotFound });
    const notThere = await run(admin.unloadVariant({ variantId: "spare.q4_0" }, auth));
    expect(notThere.error).toMatchObject({ code: Code.FailedPrecondition, rawMessage: expect.stringMatching(/is not loaded/) });
    await admin.setRouting({ weights: { [A]: 100 } }, auth);
    const sole = await run(admin.unloadVariant({ variantId: A }, auth));
    expect(sole.error).toMatchObject({
      code: Code.FailedPrecondition,
      rawMessage: expect.stringMatching(/takes every routed call; give another loaded variant a weight/),
    });
    expect((await admin.getStatus({}, auth)).loadedVariants.map((v) => [v.variantId, v.weight])).toEqual([
      [A, 100],
      [B, 0],
    ]);
  });

  it("SIGKILL of one variant's engine under load: only its calls fail, the other's all succeed, it comes back", async () => {
    await admin.setRouting({ weights: { [A]: 50, [B]: 50 } }, auth);
    const victim = server.app.pool.loaded.find((m) => m.id === B)!.serving!.engine.pid!;
    const long = (variant: string) => client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 1500, variant });
    const calls = [long(A), long(B), long(A), long(B)];
    await new Promise((r) => setTimeout(r, 300));
    process.kill(victim, "SIGKILL");
    const outcomes = await Promise.all(calls);
    expect(outcomes.map((o) => [o.trailers["airavata-variant"], o.codeName])).toEqual([
      [A, "OK"],
      [B, "UNAVAILABLE"],
      [A, "OK"],
      [B, "UNAVAILABLE"],
    ]);
    // Meanwhile the routed calls go to the variant that is up, and health says which is down.
    const routed = await client.generate({ prompt: "The", raw: true, temperature: 0, maxNewTokens: 1 });
    expect(routed.codeName).toBe("OK");
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    const statusOf = async (service: string) => (await health.check({ service })).status;
    if (server.app.pool.loaded.find((m) => m.id === B)?.serving === undefined) {
      expect(await statusOf(`airavata.v1.GenerationService/${B}`)).toBe(HealthStatus.NOT_SERVING);
    }
    expect(await statusOf(`airavata.v1.GenerationService/${A}`)).toBe(HealthStatus.SERVING);
    expect(await statusOf("")).toBe(HealthStatus.SERVING);
    let back: number | undefined;
    for (let i = 0; i < 100 && back === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      back = server.app.pool.loaded.find((m) => m.id === B)?.serving?.engine.pid;
    }
    expect(back).toBeDefined();
    expect(back).not.toBe(victim);
    const again = await client.generate({ ...greedy("The"), variant: B });
    expect(again.codeName).toBe("OK");
  }, 120_000);
});

describe("a canary promoted, then unloaded", () => {
  it("under 6 steady callers, 100/0 then UnloadVariant with drain: zero failed calls", async () => {
    await admin.setRouting({ weights: { [A]: 50, [B]: 50 } }, auth);
    const outcomes: { code: string; variant: string | undefined }[] = [];
    let calling = true;
    const workers = [1, 2, 3, 4, 5, 6].map(async (n) => {
      const c = new AiravataClient(server.address);
      while (calling) {
        const o = await c.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 20 + n * 20 });
        outcomes.push({ code: o.codeName, variant: o.trailers["airavata-variant"] });
      }
      c.close();
    });
    // Both take calls before the promotion.
    for (let i = 0; i < 200 && new Set(outcomes.map((o) => o.variant)).size < 2; i++) await new Promise((r) => setTimeout(r, 50));
    await admin.setRouting({ weights: { [A]: 100, [B]: 0 } }, auth);
    const unload = await run(admin.unloadVariant({ variantId: B, policy: SwapPolicy.DRAIN }, auth));
    expect(unload.error).toBeUndefined();
    expect([...new Set(unload.events.map((e) => SwapPhase[e.phase]))]).toEqual(["DRAINING", "RELEASED", "DONE"]);
    await new Promise((r) => setTimeout(r, 500));
    calling = false;
    await Promise.all(workers);
    expect(outcomes.filter((o) => o.code !== "OK")).toEqual([]);
    expect(new Set(outcomes.map((o) => o.variant))).toEqual(new Set([A, B]));
    const status = await admin.getStatus({}, auth);
    expect(status.loadedVariants.map((v) => v.variantId)).toEqual([A]);
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    await expect(health.check({ service: `airavata.v1.GenerationService/${B}` })).rejects.toMatchObject({ code: Code.NotFound });
    const last = await run(admin.unloadVariant({ variantId: A }, auth));
    expect(last.error).toMatchObject({ code: Code.FailedPrecondition, rawMessage: expect.stringMatching(/the only one loaded/) });
  }, 120_000);

  it("LoadVariant streams its phases; UnloadVariant with CANCEL ends the running calls CANCELLED with trailers", async () => {
    const load = await run(admin.loadVariant({ variantId: B }, auth));
    expect(load.error).toBeUndefined();
    expect([...new Set(load.events.map((e) => SwapPhase[e.phase]))]).toEqual(["CHECKING", "LOADING", "WARMING", "DONE"]);
    // Loaded with weight 0: only calls that name it go there.
    expect((await admin.getStatus({}, auth)).loadedVariants.map((v) => [v.variantId, v.weight])).toEqual([
      [A, 100],
      [B, 0],
    ]);
    const running = [1, 2].map(() => client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 3000, variant: B }));
    const other = client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 200, variant: A });
    await new Promise((r) => setTimeout(r, 300));
    const unload = await run(admin.unloadVariant({ variantId: B, policy: SwapPolicy.CANCEL }, auth));
    expect(unload.error).toBeUndefined();
    for (const outcome of await Promise.all(running)) {
      expect(outcome.codeName).toBe("CANCELLED");
      expect(outcome.message).toMatch(/variant unload of "tiny\.q8_0" \(policy CANCEL\)/);
      expect(outcome.trailers["airavata-finish-reason"]).toBe("cancelled");
      expect(outcome.trailers["airavata-variant"]).toBe(B);
    }
    expect((await other).codeName).toBe("OK");
  }, 120_000);
});

describe("starting with several variants", () => {
  it("AIRAVATA_VARIANTS with weights loads each with its weight, in a real server process", async () => {
    const proc = await startServerProcess(["--models-dir", modelsDir, "--threads", "1", "--context-size", "512"], {
      AIRAVATA_VARIANTS: `${A}=90,${B}=10`,
      AIRAVATA_ADMIN_TOKEN: TOKEN,
    });
    try {
      const c = createClient(AdminService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
      let status = await c.getStatus({}, auth);
      // The second engine loads after the server listens: on a slow machine under the suite's load, seconds.
      for (let i = 0; i < 600 && status.loadedVariants.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 100));
        status = await c.getStatus({}, auth);
      }
      expect(status.loadedVariants.map((v) => [v.variantId, v.weight])).toEqual([
        [A, 90],
        [B, 10],
      ]);
      expect(status.startupNotes).toContain(`serving "${A}", "${B}"`);
      // A weight in JSON that is not a uint32 never reaches the policy.
      const negative = await fetch(`http://127.0.0.1:${proc.port}/airavata.v1.AdminService/SetRouting`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
        body: JSON.stringify({ weights: { [A]: -1 } }),
      });
      expect(negative.status).toBe(400);
      expect(((await negative.json()) as { code: string }).code).toBe("invalid_argument");
      expect((await c.getStatus({}, auth)).loadedVariants.map((v) => v.weight)).toEqual([90, 10]);
    } finally {
      proc.child.kill("SIGTERM");
      await proc.exited;
    }
  }, 120_000);
});

describe("the memory check before a load", () => {
  it("a second variant that does not fit the budget is refused with the numbers; the first serves on", async () => {
    const dir = mkdtempSync(join(tmpdir(), "airavata-pool-budget-"));
    copyFileSync(modelPath("q4_0"), join(dir, `${A}.gguf`));
    copyFileSync(modelPath("q8_0"), join(dir, `${B}.gguf`));
    // The same settings as the server above, so the same needs: room for one and a half of "tiny.q4_0".
    const needs = server.app.pool.loaded.find((m) => m.id === A)!.serving!.needs.ramBytes;
    const budgeted = await startTestServer({
      modelPath: undefined,
      variant: A,
      modelsDir: dir,
      adminToken: TOKEN,
      contextSize: 4096,
      memoryBudget: Math.round(needs * 1.5),
    });
    try {
      const c = createClient(AdminService, createGrpcTransport({ baseUrl: budgeted.baseUrl }));
      const refused = await run(c.loadVariant({ variantId: B }, auth));
      expect(refused.error).toMatchObject({
        code: Code.ResourceExhausted,
        rawMessage: expect.stringMatching(
          /^variant "tiny\.q8_0" needs about [\d.]+ MiB of RAM; [\d.]+ MiB is free of the memory budget of [\d.]+ MiB beside "tiny\.q4_0" \([\d.]+ MiB\); unload a variant first$/,
        ),
      });
      const status = await c.getStatus({}, auth);
      expect(status.loadedVariants.map((v) => v.variantId)).toEqual([A]);
      const g = new AiravataClient(budgeted.address);
      const outcome = await g.generate({ prompt: "The", raw: true, temperature: 0 });
      g.close();
      expect(outcome.codeName).toBe("OK");
      expect(outcome.text).toBe("end of story🙏");
    } finally {
      await budgeted.app.shutdown();
    }
  }, 60_000);
});
