import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { generateOver } from "../helpers/connect-clients.js";
import { eventually, sample } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { pythonStubs, runPython } from "../../harness/python-client.js";

// One slot: a call that kept its slot after a cancel would block the next one.
let server: TestServer;
let client: AiravataClient;
let stubs: string;
beforeAll(async () => {
  stubs = pythonStubs();
  server = await startTestServer({ parallel: 1, contextSize: 4096 });
  client = new AiravataClient(server.address);
});
afterAll(async () => {
  client.close();
  await server.app.shutdown();
});

const LONG = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 4000 };

/** A long generation over grpc-js, cancelled by the client once `messages` messages have arrived. */
function cancelledAfter(messages: number) {
  const controller = new AbortController();
  let seen = 0;
  return client.generate(LONG, () => ++seen === messages && controller.abort(), { signal: controller.signal });
}

describe("cancellation", () => {
  it("ends the stream CANCELLED, reports `cancelled`, and frees the only slot at once", async () => {
    const outcome = await cancelledAfter(5);
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
    const outcome = await cancelledAfter(5);
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

  // The server ends a call with a deadline ahead of it by max(--deadline-margin = 30 ms, 10% of the
  // call's time) plus the connection's round trip: a 20 ms call at once, a 50 ms one after 20 ms.
  // Before, 2-17 of 30 such calls got their trailers at 20 ms. The server sends them every time; a
  // client stalled past its deadline on a loaded machine still ends a call itself now and then
  // (0-1 in 100 per level in bench/results/deadline-margin.md; 3 of 30 at 20 ms in one CI run on an
  // AMD machine, with another test file decoding on both cores), so up to 4 misses in 30 pass.
  for (const deadlineMs of [20, 50]) {
    it(`a ${deadlineMs} ms deadline, 30 calls from grpc-js and 30 from Python's grpcio: DEADLINE_EXCEEDED with the trailers`, async () => {
      const before = await sample(server.baseUrl, "airavata_requests_total", {
        code: "DEADLINE_EXCEEDED",
        finish_reason: "deadline",
      });
      let withTrailers = 0;
      for (let i = 0; i < 30; i++) {
        const outcome = await client.generate(LONG, undefined, { timeoutMs: deadlineMs });
        expect(outcome.codeName).toBe("DEADLINE_EXCEEDED");
        if (outcome.trailers["airavata-finish-reason"] === undefined) continue;
        withTrailers++;
        expect(outcome.trailers["airavata-finish-reason"]).toBe("deadline");
        expect(Number(outcome.trailers["airavata-total-ms"])).toBeLessThan(deadlineMs);
        expect(Number(outcome.trailers["airavata-generated-tokens"])).toBe(
          outcome.responses.reduce((n, r) => n + r.tokenIds.length, 0),
        );
        if (deadlineMs === 20) expect(outcome.text).toBe(""); // ended as it arrived: no time to generate in
      }
      expect(withTrailers).toBeGreaterThanOrEqual(26);
      const python = await runPython<{ codes: Record<string, number>; withTrailers: number }>(stubs, "deadline_calls.py", [
        server.address,
        String(deadlineMs),
        "30",
      ]);
      expect(python.codes).toEqual({ DEADLINE_EXCEEDED: 30 });
      expect(python.withTrailers).toBeGreaterThanOrEqual(26);
      // Every one of the 60 was ended by the server, trailers sent.
      expect(
        await eventually(
          () => sample(server.baseUrl, "airavata_requests_total", { code: "DEADLINE_EXCEEDED", finish_reason: "deadline" }),
          before + 60,
        ),
      ).toBe(before + 60);
    });
  }

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

describe("a cancel during a long prompt", () => {
  // Small batches, so the prompt goes in over many decodes; nothing cached, so each call feeds all of it.
  let slow: TestServer;
  let slowClient: AiravataClient;
  beforeAll(async () => {
    slow = await startTestServer({ parallel: 1, contextSize: 4096, batchSize: 16, prefixCache: false });
    slowClient = new AiravataClient(slow.address);
  });
  afterAll(async () => {
    slowClient.close();
    await slow.app.shutdown();
  });

  it("takes effect after the batch being decoded: the next call waits for one batch, not the rest of the prompt", async () => {
    // About 3,000 tokens: on some test machines the tiny model took only 100–220 ms over 1,000.
    const prompt = "भारत एक विशाल देश है और इसकी राजधानी नई दिल्ली है। ".repeat(170);
    const count = (await slowClient.tokenize(prompt)).response!.count;
    expect(count).toBeGreaterThan(2500);
    expect(count).toBeLessThan(4000);
    const request = { prompt, raw: true, temperature: 0, maxNewTokens: 1 };
    const whole = await slowClient.generate(request);
    expect(whole.codeName).toBe("OK");
    const prefillMs = Number(whole.trailers["airavata-prefill-ms"]);
    // Long enough for a cancel to land well inside it.
    expect(prefillMs).toBeGreaterThan(400);
    const controller = new AbortController();
    const cancelled = slowClient.generate(request, undefined, { signal: controller.signal });
    await new Promise((r) => setTimeout(r, prefillMs / 4));
    controller.abort();
    // The only slot is the cancelled call's until its engine stops.
    const next = await slowClient.generate({ prompt: "The", raw: true, temperature: 0 });
    expect((await cancelled).codeName).toBe("CANCELLED");
    expect(next.codeName).toBe("OK");
    expect(next.text).toBe("end of story🙏");
    expect(Number(next.trailers["airavata-queue-ms"])).toBeLessThan(prefillMs / 4);
  });
});
