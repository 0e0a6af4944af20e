/**
 * The engine process dies or hangs under running streams: the calls it held
 * end UNAVAILABLE with their trailers, health goes NOT_SERVING, the engine is
 * restarted on the same variant and serving resumes — the server itself never
 * restarts. A crash loop stops the restarts and says so.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { enginePids } from "../../harness/proc.js";
import { AiravataClient, type GenerateOutcome } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase, SwapPolicy } from "../../src/gen/airavata/v1/admin_pb.js";
import { Health, HealthCheckResponse_ServingStatus as HealthStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const LONG = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 1500 };
const GREETING = "नमस्ते! मैं एक छोटा परीक्षण मॉडल हूँ।";

let server: TestServer | undefined;
afterEach(async () => {
  await server?.app.shutdown();
  server = undefined;
});

async function start(overrides: Parameters<typeof startTestServer>[0]) {
  server = await startTestServer({ parallel: 2, contextSize: 2048, ...overrides });
  const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
  const status = async () => (await health.check({ service: "" })).status;
  return { server, client: new AiravataClient(server.address), status };
}

/** Polls until `read` gives `want` (or the time is up) and returns the last value read. */
async function until<T>(read: () => Promise<T> | T, want: T, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  let value = await read();
  while (value !== want && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 25));
    value = await read();
  }
  return value;
}

/** Two long streams; `fault` runs once both have streamed 20 tokens. */
async function streamsThrough(client: AiravataClient, fault: () => void): Promise<GenerateOutcome[]> {
  let seen = 0;
  let fired = false;
  const onToken = () => {
    if (++seen >= 40 && !fired) {
      fired = true;
      fault();
    }
  };
  return Promise.all([client.generate(LONG, onToken), client.generate(LONG, onToken)]);
}

function expectFailedByEngine(outcomes: GenerateOutcome[]): void {
  for (const o of outcomes) {
    expect(o.codeName).toBe("UNAVAILABLE");
    expect(o.message).toMatch(/engine process stopped/);
    expect(o.trailers["airavata-finish-reason"]).toBe("error");
    expect(Number(o.trailers["airavata-generated-tokens"])).toBeGreaterThan(0);
    expect(o.text.startsWith(GREETING)).toBe(true);
  }
}

describe("engine supervision", () => {
  it("SIGKILL mid-stream: the calls end UNAVAILABLE with trailers, the engine restarts, the next call works", async () => {
    const { server, client, status } = await start({});
    const first = server.app.pool.current!.engine.pid!;
    const notServing = until(status, HealthStatus.NOT_SERVING);
    const outcomes = await streamsThrough(client, () => process.kill(first, "SIGKILL"));
    expectFailedByEngine(outcomes);
    expect(await notServing).toBe(HealthStatus.NOT_SERVING);
    expect(await until(status, HealthStatus.SERVING)).toBe(HealthStatus.SERVING);
    const second = server.app.pool.current!.engine.pid!;
    expect(second).not.toBe(first);
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.codeName).toBe("OK");
    expect(next.text).toBe("end of story🙏");
    const v = { variant: "tiny.q4_0" };
    expect(await sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "crashed" })).toBe(1);
    expect(await sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "restarted" })).toBe(1);
    expect(await sample(server.baseUrl, "airavata_requests_total", { ...v, code: "UNAVAILABLE", finish_reason: "error" })).toBe(
      2,
    );
    client.close();
  });

  it("SIGSTOP mid-stream: the watchdog kills the silent engine after its time and it restarts", async () => {
    const { server, client, status } = await start({ engineWatchdogMs: 1000 });
    const stopped = server.app.pool.current!.engine.pid!;
    let stoppedAt = 0;
    const outcomes = await streamsThrough(client, () => {
      stoppedAt = Date.now();
      process.kill(stopped, "SIGSTOP");
    });
    const waited = Date.now() - stoppedAt;
    expectFailedByEngine(outcomes);
    // The watchdog's time counts from the engine's last answer (pings go every quarter of it), so
    // the kill comes between ¾ of that time and a little over it after the stop.
    expect(waited).toBeGreaterThanOrEqual(700);
    expect(waited).toBeLessThan(5000);
    expect(await until(status, HealthStatus.SERVING)).toBe(HealthStatus.SERVING);
    expect(server.app.pool.current!.engine.pid).not.toBe(stopped);
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.text).toBe("end of story🙏");
    expect(await sample(server.baseUrl, "airavata_engine_events_total", { variant: "tiny.q4_0", event: "hung" })).toBe(1);
    client.close();
  });

  it("a crash loop stops the restarts: health stays NOT_SERVING, calls get UNAVAILABLE, the metrics and logs say so", async () => {
    const { server, client, status } = await start({ engineMaxRestarts: 1 });
    const v = { variant: "tiny.q4_0" };
    process.kill(server.app.pool.current!.engine.pid!, "SIGKILL");
    const restarted = () => sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "restarted" });
    expect(await until(restarted, 1)).toBe(1);
    expect(await until(status, HealthStatus.SERVING)).toBe(HealthStatus.SERVING);
    process.kill(server.app.pool.current!.engine.pid!, "SIGKILL");
    const loop = () => sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "crash_loop" });
    expect(await until(loop, 1)).toBe(1);
    // Given up: it stays down, and says why.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await status()).toBe(HealthStatus.NOT_SERVING);
    expect(await restarted()).toBe(1);
    expect(server.app.pool.startupNotes.at(-1)).toMatch(/engine of "tiny.q4_0" failed 2 times in 5 minutes; not restarted/);
    const refused = await client.generate({ prompt: "The", raw: true });
    expect(refused.codeName).toBe("UNAVAILABLE");
    client.close();
  });

  it("the new engine killed during a swap: the swap fails, the old variant serves on untouched", async () => {
    const TOKEN = "supervision-admin-token-0123456789";
    const modelsDir = mkdtempSync(join(tmpdir(), "airavata-supervision-"));
    copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
    copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
    process.env.HF_ENDPOINT = "https://airavata-test.invalid";
    const { server, client, status } = await start({ modelPath: undefined, variant: "tiny.q4_0", modelsDir, adminToken: TOKEN });
    delete process.env.HF_ENDPOINT;
    const admin = createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl }));
    const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
    const serving = server.app.pool.current!.engine.pid!;
    const running = client.generate(LONG);
    const phases: SwapPhase[] = [];
    let killed: number | undefined;
    let failure: ConnectError | undefined;
    try {
      for await (const p of admin.swapVariant({ variantId: "tiny.q8_0", policy: SwapPolicy.DRAIN }, auth)) {
        phases.push(p.phase);
        if (p.phase === SwapPhase.LOADING && killed === undefined) {
          killed = enginePids(process.pid).find((pid) => pid !== serving);
          if (killed !== undefined) process.kill(killed, "SIGKILL");
        }
      }
    } catch (error) {
      failure = ConnectError.from(error);
    }
    expect(killed).toBeDefined();
    expect(failure?.rawMessage).toMatch(/variant "tiny.q8_0" failed to load: engine process exited while loading/);
    expect(phases).not.toContain(SwapPhase.SWITCHED);
    // The old variant never stopped: same engine, still serving, the running call completes.
    expect(await status()).toBe(HealthStatus.SERVING);
    expect(server.app.pool.current!.entry.id).toBe("tiny.q4_0");
    expect(server.app.pool.current!.engine.pid).toBe(serving);
    const done = await running;
    expect(done.codeName).toBe("OK");
    expect(done.trailers["airavata-variant"]).toBe("tiny.q4_0");
    expect(await sample(server.baseUrl, "airavata_engine_events_total", { variant: "tiny.q4_0", event: "crashed" })).toBe(0);
    // And the next swap works.
    const again: SwapPhase[] = [];
    for await (const p of admin.swapVariant({ variantId: "tiny.q8_0", policy: SwapPolicy.DRAIN }, auth)) again.push(p.phase);
    expect(again.at(-1)).toBe(SwapPhase.DONE);
    client.close();
  });

  it("the model file gone when the engine must restart: restarts fail and say why; back in place, serving resumes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "airavata-supervision-"));
    const file = join(dir, "tiny.q4_0.gguf");
    copyFileSync(modelPath("q4_0"), file);
    const { server, client, status } = await start({ modelPath: file, engineMaxRestarts: 20 });
    const v = { variant: "tiny.q4_0" };
    // While loaded, the engine keeps its mapping of the file: removing it changes nothing.
    rmSync(file);
    expect((await client.generate({ prompt: "The", raw: true, temperature: 0 })).text).toBe("end of story🙏");
    // A crash now: the restart cannot find the file.
    process.kill(server.app.pool.current!.engine.pid!, "SIGKILL");
    const failed = () => sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "restart_failed" });
    expect(await until(failed, 1)).toBe(1);
    expect(await status()).toBe(HealthStatus.NOT_SERVING);
    // A truncated file fails the same way, without taking anything down.
    writeFileSync(file, readFileSync(modelPath("q4_0")).subarray(0, 4096));
    expect(await until(failed, 2)).toBe(2);
    copyFileSync(modelPath("q4_0"), file);
    expect(await until(status, HealthStatus.SERVING)).toBe(HealthStatus.SERVING);
    expect(await sample(server.baseUrl, "airavata_engine_events_total", { ...v, event: "restarted" })).toBe(1);
    expect((await client.generate({ prompt: "The", raw: true, temperature: 0 })).text).toBe("end of story🙏");
    client.close();
  });
});
