import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { generateOver } from "../helpers/connect-clients.js";
import { eventually, sample } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// One slot: a call that kept its slot after a cancel would block the next one.
let server: TestServer;
let client: AiravataClient;
beforeAll(async () => {
  server = await startTestServer({ parallel: 1, contextSize: 4096 });
  client = new AiravataClient(server.address);
});
afterAll(async () => {
  client.close();
  await server.app.shutdown();
});

const LONG = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 4000 };

describe("cancellation", () => {
  it("ends the stream CANCELLED, reports `cancelled`, and frees the only slot at once", async () => {
    const controller = new AbortController();
    let seen = 0;
    const outcome = await client.generate(
      LONG,
      () => {
        if (++seen === 5) controller.abort();
      },
      { signal: controller.signal },
    );
    expect(outcome.codeName).toBe("CANCELLED");
    expect(outcome.responses.length).toBeLessThan(50);
    const cancelled = await eventually(
      () => sample(server.baseUrl, "airavata_requests_total", { code: "CANCELLED", finish_reason: "cancelled" }),
      1,
    );
    expect(cancelled).toBe(1);
    // Generating 4000 tokens takes many seconds here; the next call must not wait for that.
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.codeName).toBe("OK");
    expect(Number(next.trailers["airavata-queue-ms"])).toBeLessThan(1000);
    expect(next.text).toBe("end of story🙏");
  });

  it("a cancelled call's metrics carry its real prefill time and batch size", async () => {
    const variant = { variant: "tiny.q4_0" };
    const before = {
      prefills: await sample(server.baseUrl, "airavata_request_prefill_time_seconds_count", variant),
      prefillSum: await sample(server.baseUrl, "airavata_request_prefill_time_seconds_sum", variant),
      batches: await sample(server.baseUrl, "airavata_request_batch_size_count", variant),
      batchSum: await sample(server.baseUrl, "airavata_request_batch_size_sum", variant),
    };
    const controller = new AbortController();
    let seen = 0;
    const outcome = await client.generate(
      LONG,
      () => {
        if (++seen === 5) controller.abort();
      },
      { signal: controller.signal },
    );
    expect(outcome.codeName).toBe("CANCELLED");
    expect(await eventually(() => sample(server.baseUrl, "airavata_request_batch_size_count", variant), before.batches + 1)).toBe(
      before.batches + 1,
    );
    expect(await sample(server.baseUrl, "airavata_request_prefill_time_seconds_count", variant)).toBe(before.prefills + 1);
    // One slot: every step held this call alone. The prefill took some time (not the 0 reported before).
    expect((await sample(server.baseUrl, "airavata_request_batch_size_sum", variant)) - before.batchSum).toBe(1);
    expect(
      (await sample(server.baseUrl, "airavata_request_prefill_time_seconds_sum", variant)) - before.prefillSum,
    ).toBeGreaterThan(0);
  });

  it("over Connect too, the other calls are undisturbed", async () => {
    const controller = new AbortController();
    let seen = 0;
    const outcome = await generateOver("connect-h1", server.baseUrl, LONG, {
      signal: controller.signal,
      onResponse: () => {
        if (++seen === 3) controller.abort();
      },
    });
    expect(outcome.code).toBe("Canceled");
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.text).toBe("end of story🙏");
  });
});

describe("deadlines", () => {
  it("a short deadline ends DEADLINE_EXCEEDED with finish reason `deadline` in the trailers (grpc-js)", async () => {
    const outcome = await client.generate(LONG, undefined, { timeoutMs: 400 });
    expect(outcome.codeName).toBe("DEADLINE_EXCEEDED");
    expect(outcome.responses.length).toBeGreaterThan(0);
    expect(outcome.trailers["airavata-finish-reason"]).toBe("deadline");
    expect(Number(outcome.trailers["airavata-generated-tokens"])).toBe(
      outcome.responses.reduce((n, r) => n + r.tokenIds.length, 0),
    );
    expect(outcome.metrics?.totalMs).toBeLessThan(400);
  });

  it("and over Connect and gRPC-Web", async () => {
    for (const protocol of ["connect-h1", "grpc-web-h1"] as const) {
      const outcome = await generateOver(protocol, server.baseUrl, LONG, { timeoutMs: 400 });
      expect(outcome.code).toBe("DeadlineExceeded");
      expect(outcome.trailers.get("airavata-finish-reason")).toBe("deadline");
    }
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(next.codeName).toBe("OK");
  });
});
