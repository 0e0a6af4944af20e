import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient, type GenerateInit } from "../../clients/grpc-client.js";
import { generateOver } from "../helpers/connect-clients.js";
import { idle } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let server: TestServer;
let client: AiravataClient;
beforeAll(async () => {
  server = await startTestServer({ parallel: 1, maxQueue: 1, contextSize: 512, maxMessageBytes: 16 * 1024 });
  client = new AiravataClient(server.address);
});
afterAll(async () => {
  client.close();
  await server.app.shutdown();
});

async function expectWorking() {
  const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
  expect(outcome.codeName).toBe("OK");
  expect(outcome.text).toBe("end of story🙏");
}

const invalid: [string, GenerateInit, RegExp][] = [
  ["an empty prompt", { prompt: "" }, /prompt is empty/],
  ["prompt and messages together", { prompt: "hi", messages: [{ role: "user", content: "hi" }] }, /either prompt or messages/],
  ["an unknown role", { messages: [{ role: "bot", content: "hi" }] }, /messages\[0\]\.role "bot" is unknown/],
  [
    "a conversation not ending with the user",
    {
      messages: [
        { role: "user", content: "a" },
        { role: "assistant", content: "b" },
      ],
    },
    /last message/,
  ],
  ["an empty message", { messages: [{ role: "user", content: "" }] }, /messages\[0\]\.content is empty/],
  ["raw with messages", { raw: true, messages: [{ role: "user", content: "hi" }] }, /raw applies to prompt only/],
  ["NaN temperature", { prompt: "hi", temperature: Number.NaN }, /temperature must be a finite number/],
  ["infinite top_p", { prompt: "hi", topP: Number.POSITIVE_INFINITY }, /top_p must be a finite number/],
  ["negative temperature", { prompt: "hi", temperature: -0.5 }, /temperature must be in \[0, 2\], got -0.5/],
  ["top_p of 0", { prompt: "hi", topP: 0 }, /top_p must be in \(0, 1\]/],
  ["min_p above 1", { prompt: "hi", minP: 1.5 }, /min_p must be in \[0, 1\]/],
  ["a negative repeat_penalty", { prompt: "hi", repeatPenalty: -1 }, /repeat_penalty must be in \(0, 10\]/],
  ["max_new_tokens of 0", { prompt: "hi", maxNewTokens: 0 }, /max_new_tokens must be at least 1/],
  ["an empty stop string", { prompt: "hi", stop: [""] }, /stop\[0\] is empty/],
  ["too many stop strings", { prompt: "hi", stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, /at most 16 stop strings/],
];

describe("bad requests get a clear error, the right code, and change nothing", () => {
  it.each(invalid)("%s → INVALID_ARGUMENT", async (_name, request, message) => {
    const outcome = await client.generate(request);
    expect(outcome.codeName).toBe("INVALID_ARGUMENT");
    expect(outcome.message).toMatch(message);
    expect(outcome.trailers["airavata-finish-reason"]).toBe("error");
    expect(outcome.trailers["airavata-generated-tokens"]).toBe("0");
    // Refused before it asked for a slot, and no text streamed: no queue time, no first text.
    expect(outcome.trailers["airavata-queue-ms"]).toBe("0.00");
    expect(outcome.trailers["airavata-ttft-ms"]).toBe("0.00");
    expect(Number(outcome.trailers["airavata-total-ms"])).toBeGreaterThan(0);
    expect(outcome.metrics?.timeToFirstTokenMs).toBe(0);
  });

  it("a prompt and max_new_tokens beyond the context → OUT_OF_RANGE with the numbers", async () => {
    const outcome = await client.generate({ prompt: "नमस्ते", maxNewTokens: 600 });
    expect(outcome.codeName).toBe("OUT_OF_RANGE");
    const numbers = /prompt \((\d+) tokens\) \+ max_new_tokens \(600\) = \d+ exceeds the context of 512 tokens/.exec(
      outcome.message ?? "",
    );
    expect(numbers).not.toBeNull();
    // The trailers count the same prompt the message names; nothing was streamed.
    expect(outcome.trailers["airavata-prompt-tokens"]).toBe(numbers![1]);
    expect(Number(numbers![1])).toBeGreaterThan(0);
    expect(outcome.trailers["airavata-ttft-ms"]).toBe("0.00");
    expect(outcome.trailers["airavata-generated-tokens"]).toBe("0");
    expect(outcome.trailers["airavata-finish-reason"]).toBe("error");
    await expectWorking();
  });

  it("a message over the size limit → RESOURCE_EXHAUSTED, over gRPC and Connect", async () => {
    const prompt = "क".repeat(20_000);
    const outcome = await client.generate({ prompt });
    expect(outcome.codeName).toBe("RESOURCE_EXHAUSTED");
    expect(outcome.message).toMatch(/message size|exceeds|larger/i);
    const connect = await generateOver("connect-h1", server.baseUrl, { prompt });
    expect(connect.code).toBe("ResourceExhausted");
    const tokenize = await client.tokenize(prompt);
    expect(tokenize.codeName).toBe("RESOURCE_EXHAUSTED");
    await expectWorking();
  });

  it("a full queue → RESOURCE_EXHAUSTED at once with a retry hint", async () => {
    const long = { prompt: "नमस्ते", temperature: 0, maxNewTokens: 400 };
    const controller = new AbortController();
    // The third call goes out once the first streams and the second has been told its queue position.
    let streaming!: () => void;
    let waiting!: () => void;
    const started = new Promise<void>((resolve) => (streaming = resolve));
    const inQueue = new Promise<void>((resolve) => (waiting = resolve));
    const running = client.generate(long, (r) => r.text !== "" && streaming(), { signal: controller.signal });
    await started;
    const queued = client.generate(long, (r) => r.queuePosition > 0 && waiting(), { signal: controller.signal });
    await inQueue;
    const refused = await client.generate(long);
    expect(refused.codeName).toBe("RESOURCE_EXHAUSTED");
    expect(refused.message).toMatch(/busy: 1 running and 1 queued/);
    expect(Number(refused.trailers["grpc-retry-pushback-ms"])).toBeGreaterThan(0);
    expect(refused.trailers["airavata-ttft-ms"]).toBe("0.00");
    expect(refused.trailers["airavata-finish-reason"]).toBe("error");
    controller.abort();
    expect((await running).codeName).toBe("CANCELLED");
    expect((await queued).codeName).toBe("CANCELLED");
    await idle(server.baseUrl);
    await expectWorking();
  });

  it("an unknown method → 404 (UNIMPLEMENTED for gRPC clients)", async () => {
    const response = await fetch(`${server.baseUrl}/airavata.v1.GenerationService/Nope`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(response.status).toBe(404);
    await expectWorking();
  });
});
