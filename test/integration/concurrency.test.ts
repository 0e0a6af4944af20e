import { afterAll, describe, expect, it } from "vitest";
import { AiravataClient, type GenerateInit } from "../../clients/grpc-client.js";
import { generateOver } from "../helpers/connect-clients.js";
import { idle, sample } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const servers: TestServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.app.shutdown()));
});
async function server(overrides: Parameters<typeof startTestServer>[0]) {
  const s = await startTestServer(overrides);
  servers.push(s);
  return s;
}

const REQUESTS: GenerateInit[] = [
  { prompt: "नमस्ते", temperature: 0, maxNewTokens: 120 },
  { prompt: "The", raw: true, temperature: 0 },
  { prompt: "hello", raw: true, temperature: 0, maxNewTokens: 80 },
  {
    messages: [
      { role: "system", content: "Be brief." },
      { role: "user", content: "भारत" },
    ],
    temperature: 0.7,
    seed: 11,
    maxNewTokens: 90,
  },
];

describe("continuous batching", () => {
  it("four concurrent streams on four slots give each the text it gets alone", async () => {
    const s = await server({ parallel: 4, contextSize: 512 });
    const client = new AiravataClient(s.address);
    const alone = [];
    for (const r of REQUESTS) alone.push((await client.generate(r)).text);
    const together = await Promise.all(REQUESTS.map((r) => client.generate(r)));
    expect(together.map((o) => o.codeName)).toEqual(["OK", "OK", "OK", "OK"]);
    expect(together.map((o) => o.text)).toEqual(alone);
    client.close();
  });

  it("/metrics shows how many requests decoded together: about four for four at once, one for a call alone", async () => {
    const s = await server({ parallel: 4, contextSize: 512, batching: "full" });
    const client = new AiravataClient(s.address);
    const same = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 100 };
    const together = await Promise.all([0, 1, 2, 3].map(() => client.generate(same)));
    expect(together.map((o) => o.codeName)).toEqual(["OK", "OK", "OK", "OK"]);
    const v = { variant: "tiny.q4_0" };
    const count = () => sample(s.baseUrl, "airavata_request_batch_size_count", v);
    expect(await count()).toBe(4);
    // Each of the four took nearly all its 100 tokens in steps of four (a prompt may reach the loop a step late).
    expect(await sample(s.baseUrl, "airavata_request_batch_size_sum", v)).toBeGreaterThan(4 * 3.5);
    expect(await sample(s.baseUrl, "airavata_request_batch_size_bucket", { ...v, le: "3" })).toBe(0);
    expect((await client.generate(same)).codeName).toBe("OK");
    expect(await count()).toBe(5);
    expect(await sample(s.baseUrl, "airavata_request_batch_size_bucket", { ...v, le: "1" })).toBe(1);
    client.close();
  });

  it("a call that arrives while three others stream gets its first token while they still stream", async () => {
    const s = await server({ parallel: 4, contextSize: 2048 });
    const client = new AiravataClient(s.address);
    const long = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 600 };
    const ended: number[] = [];
    let joined: Promise<unknown> | undefined;
    let firstTokenAt = 0;
    let seen = 0;
    const onToken = () => {
      // Once the three are well into decoding, a fourth call comes in.
      if (++seen === 60) joined = client.generate({ ...long, maxNewTokens: 5 }, () => (firstTokenAt ||= performance.now()));
    };
    const three = await Promise.all(
      [0, 1, 2].map(() => client.generate(long, onToken).then((o) => (ended.push(performance.now()), o))),
    );
    await joined;
    expect(three.map((o) => o.codeName)).toEqual(["OK", "OK", "OK"]);
    expect(firstTokenAt).toBeGreaterThan(0);
    // It joined the running steps: its first token came before the first of the three ended.
    expect(firstTokenAt).toBeLessThan(Math.min(...ended));
    client.close();
  });

  it("cancelling one of three streams mid-decode leaves the other two unchanged, and frees its slot", async () => {
    const s = await server({ parallel: 3, contextSize: 2048, maxQueue: 0 });
    const client = new AiravataClient(s.address);
    const long = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 1500 };
    const others = [REQUESTS[2]!, REQUESTS[3]!];
    const alone = [];
    for (const r of others) alone.push((await client.generate(r)).text);
    const controller = new AbortController();
    let seen = 0;
    const cancelled = client.generate(long, () => ++seen === 20 && controller.abort(), { signal: controller.signal });
    const results = await Promise.all([cancelled, ...others.map((r) => client.generate(r))]);
    expect(results[0]!.codeName).toBe("CANCELLED");
    expect(results.slice(1).map((o) => o.text)).toEqual(alone);
    await idle(s.baseUrl);
    // With no queue at all, a fourth call right after works only if the slot came back.
    const three = await Promise.all([long, long, long].map((r) => client.generate({ ...r, maxNewTokens: 30 })));
    expect(three.map((o) => o.codeName)).toEqual(["OK", "OK", "OK"]);
    client.close();
  });
});

describe("admission", () => {
  it("one slot, a queue of two: the fourth call is refused at once; the queued run in order, their places counting down", async () => {
    const s = await server({ parallel: 1, maxQueue: 2, contextSize: 2048 });
    const client = new AiravataClient(s.address);
    const order: number[] = [];
    const long = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 600 };
    // Long enough to still hold the slot when the fourth call comes, on a fast machine too.
    const first = client.generate({ ...long, maxNewTokens: 1800 }).then((o) => (order.push(1), o));
    await new Promise((r) => setTimeout(r, 150));
    const places: Record<number, number[]> = { 2: [], 3: [] };
    const second = generateOver("grpc-h2", s.baseUrl, long, {
      onResponse: (r) => r.queuePosition && places[2]!.push(r.queuePosition),
    }).then((o) => (order.push(2), o));
    await new Promise((r) => setTimeout(r, 150));
    const third = generateOver(
      "grpc-h2",
      s.baseUrl,
      { ...long, maxNewTokens: 50 },
      {
        onResponse: (r) => r.queuePosition && places[3]!.push(r.queuePosition),
      },
    ).then((o) => (order.push(3), o));
    await new Promise((r) => setTimeout(r, 150));
    const started = Date.now();
    const fourth = await client.generate(long);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(fourth.codeName).toBe("RESOURCE_EXHAUSTED");
    expect(fourth.message).toMatch(/busy: 1 running and 2 queued/);
    expect(Number(fourth.trailers["grpc-retry-pushback-ms"])).toBeGreaterThan(0);
    const [a, b, c] = await Promise.all([first, second, third]);
    expect([a.codeName, b.code, c.code]).toEqual(["OK", "ok", "ok"]);
    expect(order).toEqual([1, 2, 3]);
    expect(b.headers.get("airavata-queue-position")).toBe("1");
    expect(c.headers.get("airavata-queue-position")).toBe("2");
    expect(places[2]).toEqual([1]);
    expect(places[3]).toEqual([2, 1]);
    // Queue messages carry no text and come before any text.
    const firstText = c.responses.findIndex((r) => r.text !== "");
    expect(c.responses.slice(0, firstText).every((r) => r.queuePosition > 0 && r.text === "")).toBe(true);
    expect(Number(c.trailers.get("airavata-queue-ms"))).toBeGreaterThan(Number(b.trailers.get("airavata-queue-ms")));
    client.close();
  });

  it("a deadline that passes in the queue ends DEADLINE_EXCEEDED, finish reason deadline, and leaves the queue", async () => {
    const s = await server({ parallel: 1, maxQueue: 4, contextSize: 2048 });
    const client = new AiravataClient(s.address);
    const controller = new AbortController();
    const busy = client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 1800 }, undefined, {
      signal: controller.signal,
    });
    await new Promise((r) => setTimeout(r, 100));
    const late = await client.generate({ prompt: "The", raw: true }, undefined, { timeoutMs: 400 });
    expect(late.codeName).toBe("DEADLINE_EXCEEDED");
    expect(late.trailers["airavata-finish-reason"]).toBe("deadline");
    expect(late.trailers["airavata-generated-tokens"]).toBe("0");
    expect(await sample(s.baseUrl, "airavata_num_requests_waiting", {})).toBe(0);
    controller.abort();
    await busy;
    client.close();
  });
});

describe("/metrics", () => {
  it("parses as Prometheus text and its counters match the calls made", async () => {
    const s = await server({ parallel: 2 });
    const client = new AiravataClient(s.address);
    let generated = 0;
    let prompt = 0;
    for (const r of [REQUESTS[1]!, REQUESTS[2]!, { prompt: "" }, { prompt: "hi", temperature: 9 }]) {
      const o = await client.generate(r);
      generated += Number(o.trailers["airavata-generated-tokens"] ?? 0);
      prompt += Number(o.trailers["airavata-prompt-tokens"] ?? 0);
    }
    client.close();
    const text = await (await fetch(`${s.baseUrl}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      expect(line).toMatch(/^[a-zA-Z_:][\w:]*(\{[^}]*\})? (-?[\d.e+-]+|NaN|[+-]Inf)$/);
    }
    const v = { variant: "tiny.q4_0" };
    expect(await sample(s.baseUrl, "airavata_requests_total", { ...v, code: "OK", finish_reason: "stop" })).toBe(1);
    expect(await sample(s.baseUrl, "airavata_requests_total", { ...v, code: "OK", finish_reason: "length" })).toBe(1);
    expect(await sample(s.baseUrl, "airavata_requests_total", { ...v, code: "INVALID_ARGUMENT", finish_reason: "error" })).toBe(
      2,
    );
    expect(await sample(s.baseUrl, "airavata_generation_tokens_total", v)).toBe(generated);
    expect(await sample(s.baseUrl, "airavata_prompt_tokens_total", v)).toBe(prompt);
    expect(await sample(s.baseUrl, "airavata_e2e_request_latency_seconds_count", v)).toBe(4);
    expect(await sample(s.baseUrl, "airavata_time_to_first_token_seconds_count", v)).toBe(2);
    // The engine → server hop of each call that streamed, timed: a positive mean below a second.
    expect(await sample(s.baseUrl, "airavata_engine_hop_seconds_count", v)).toBe(2);
    const hop = await sample(s.baseUrl, "airavata_engine_hop_seconds_sum", v);
    expect(hop).toBeGreaterThan(0);
    expect(hop).toBeLessThan(2);
    expect(await sample(s.baseUrl, "airavata_num_requests_running", v)).toBe(0);
  });
});
