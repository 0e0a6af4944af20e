/**
 * The OpenAI-compatible surface, with the official `openai` npm package as
 * the client against the real server (design §12): chat and completions,
 * streamed and not, the same greedy text as Generate, usage, the metrics
 * extension, errors in OpenAI's shape, cancellation, the queue, and the
 * gateway metrics.
 */
import OpenAI, { APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { eventually, idle, sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { startServerProcess, startTestServer, type TestServer } from "../helpers/server.js";

let server: TestServer;
let openai: OpenAI;
let grpc: AiravataClient;

beforeAll(async () => {
  server = await startTestServer({ parallel: 2, maxQueue: 1, contextSize: 4096 });
  openai = new OpenAI({ baseURL: `${server.baseUrl}/v1`, apiKey: "unused", maxRetries: 0 });
  grpc = new AiravataClient(server.address);
});
afterAll(async () => {
  grpc.close();
  await server.app.shutdown();
});

const HELLO = "नमस्ते";
const chatGenerate = async (maxNewTokens: number) => grpc.generate({ prompt: HELLO, temperature: 0, maxNewTokens });

/** Extra fields the SDK's types do not know, sent as they are. */
type Extension = { airavata?: Record<string, unknown> };

describe("chat completions", () => {
  it("non-streamed: the greedy text equals Generate's, usage adds up, the metrics extension is there", async () => {
    const reference = await chatGenerate(40);
    const done = await openai.chat.completions.create({
      model: "airavata",
      messages: [{ role: "user", content: HELLO }],
      temperature: 0,
      max_tokens: 40,
    });
    expect(done.object).toBe("chat.completion");
    expect(done.model).toBe("tiny.q4_0");
    expect(done.choices[0]!.message).toMatchObject({ role: "assistant", content: reference.text });
    expect(done.choices[0]!.finish_reason).toBe(reference.trailers["airavata-finish-reason"] === "length" ? "length" : "stop");
    expect(done.usage).toMatchObject({
      prompt_tokens: Number(reference.trailers["airavata-prompt-tokens"]),
      completion_tokens: Number(reference.trailers["airavata-generated-tokens"]),
      total_tokens:
        Number(reference.trailers["airavata-prompt-tokens"]) + Number(reference.trailers["airavata-generated-tokens"]),
    });
    const ext = (done as unknown as Extension).airavata!;
    expect(ext).toMatchObject({ variant: "tiny.q4_0", generated_tokens: done.usage!.completion_tokens });
    expect(ext.ttft_ms).toBeGreaterThan(0);
    expect(ext.decode_tokens_per_second).toBeGreaterThan(0);
  });

  it("streamed: the chunks add up to Generate's text; include_usage sends a last usage chunk", async () => {
    const stream = await openai.chat.completions.create({
      model: "tiny.q4_0",
      messages: [
        { role: "system", content: "आप एक सहायक हैं।" },
        { role: "user", content: HELLO },
      ],
      temperature: 0,
      max_completion_tokens: 60,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    const withSystem = await grpc.generate({
      messages: [
        { role: "system", content: "आप एक सहायक हैं।" },
        { role: "user", content: HELLO },
      ],
      temperature: 0,
      maxNewTokens: 60,
    });
    expect(text).toBe(withSystem.text);
    expect(chunks.length).toBeGreaterThan(5);
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage!.completion_tokens).toBe(Number(withSystem.trailers["airavata-generated-tokens"]));
    const final = chunks.at(-2)!;
    expect(final.choices[0]!.finish_reason).not.toBeNull();
    expect((final as unknown as Extension).airavata).toMatchObject({ variant: "tiny.q4_0" });
  });
});

describe("completions", () => {
  it("streamed and not: the raw prompt's continuation, as Generate gives it", async () => {
    const reference = await grpc.generate({ prompt: "The", raw: true, temperature: 0 });
    const done = await openai.completions.create({ model: "airavata", prompt: "The", temperature: 0 });
    expect(done.object).toBe("text_completion");
    expect(done.choices[0]!.text).toBe(reference.text);
    expect(done.choices[0]!.finish_reason).toBe("stop");
    const stream = await openai.completions.create({ model: "airavata", prompt: "The", temperature: 0, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(reference.text);
  });

  it("takes the llama.cpp extras (top_k, min_p, repeat_penalty) and stop strings", async () => {
    const reference = await grpc.generate({
      prompt: "The",
      raw: true,
      temperature: 0.7,
      topK: 5,
      minP: 0.1,
      repeatPenalty: 1.2,
      seed: 7,
      stop: ["story"],
    });
    const done = await openai.completions.create({
      model: "airavata",
      prompt: "The",
      temperature: 0.7,
      seed: 7,
      stop: "story",
      // @ts-expect-error llama.cpp-style extras the SDK's types do not list
      top_k: 5,
      min_p: 0.1,
      repeat_penalty: 1.2,
    });
    expect(done.choices[0]!.text).toBe(reference.text);
  });
});

describe("models", () => {
  it("lists the routing name and the loaded variants", async () => {
    const ids = [];
    for await (const model of openai.models.list()) ids.push(model.id);
    expect(ids).toEqual(["airavata", "tiny.q4_0"]);
  });
});

describe("errors, in OpenAI's shape", () => {
  const refused = async (body: Record<string, unknown>, path = "/v1/chat/completions") => {
    const res = await fetch(`${server.baseUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return {
      status: res.status,
      headers: res.headers,
      body: (await res.json()) as { error: { message: string; type: string; param: string | null } },
    };
  };
  const chat = { messages: [{ role: "user", content: HELLO }] };

  it.each([
    [{ ...chat, temperature: "hot" }, 400, /^temperature must be a number, got "hot"$/, "temperature"],
    [{ ...chat, temperature: 9 }, 400, /^temperature must be in \[0, 2\], got 9$/, null],
    [{ ...chat, max_tokens: 0 }, 400, /^max_tokens must be at least 1$/, null],
    [{ messages: [{ role: "robot", content: "hi" }] }, 400, /messages\[0\]\.role "robot" is unknown/, null],
    [{ messages: "hi" }, 400, /^messages must be a non-empty list$/, "messages"],
    [{ ...chat, n: 2 }, 400, /^n must be 1/, "n"],
    [{ ...chat, logprobs: true }, 400, /^logprobs are not supported yet/, "logprobs"],
    [{ ...chat, response_format: { type: "json_object" } }, 400, /^response_format is not supported yet/, "response_format"],
    [{ ...chat, model: "nope" }, 404, /no variant "nope"/, "model"],
    [{ ...chat, max_tokens: 100000 }, 400, /prompt \(\d+ tokens\) \+ max_tokens \(100000\)/, null],
  ] as const)("%j → %i", async (body, status, message, param) => {
    const r = await refused(body);
    expect(r.status).toBe(status);
    expect(r.body.error.message).toMatch(message);
    expect(r.body.error.param).toBe(param);
  });

  it("the SDK sees them as APIErrors with the status; a body that is not JSON and one too large are refused too", async () => {
    const error = await openai.chat.completions
      .create({ model: "nope", messages: [{ role: "user", content: HELLO }] })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIError);
    expect((error as APIError).status).toBe(404);
    const notJson = await fetch(`${server.baseUrl}/v1/completions`, { method: "POST", body: "{not json" });
    expect(notJson.status).toBe(400);
    expect(((await notJson.json()) as { error: { message: string } }).error.message).toMatch(/^the body is not JSON/);
    const large = await refused({ prompt: "x".repeat(70 * 1024) }, "/v1/completions");
    expect(large.status).toBe(413);
    expect(large.body.error.message).toMatch(/over the limit of 65536 bytes/);
    // The service keeps serving.
    const ok = await openai.completions.create({ model: "airavata", prompt: "The", temperature: 0 });
    expect(ok.choices[0]!.text).toBe("end of story🙏");
  });

  it("a full queue is 429 with Retry-After", async () => {
    const long = () => openai.completions.create({ model: "airavata", prompt: HELLO, temperature: 0, max_tokens: 3000 });
    // Two slots and a queue of one: the fourth is refused at once.
    const running = [long(), long(), long()];
    await new Promise((r) => setTimeout(r, 300));
    // The gateway's view meanwhile: two running, one waiting.
    expect(await sample(server.baseUrl, "vllm:num_requests_running", { model_name: "tiny.q4_0" })).toBe(2);
    expect(await sample(server.baseUrl, "vllm:num_requests_waiting", { model_name: "tiny.q4_0" })).toBe(1);
    const r = await refused({ prompt: HELLO, max_tokens: 5 }, "/v1/completions");
    expect(r.status).toBe(429);
    expect(r.headers.get("retry-after")).toBe("1");
    expect(r.body.error.type).toBe("rate_limit_error");
    await Promise.all(running);
  }, 120_000);
});

describe("cancellation and the gateway metrics", () => {
  it("a client that aborts mid-stream is counted cancelled, and its slot is free at once", async () => {
    const before = await sample(server.baseUrl, "airavata_requests_total", {
      api: "openai",
      code: "CANCELLED",
      finish_reason: "cancelled",
    });
    const controller = new AbortController();
    const stream = await openai.chat.completions.create(
      { model: "airavata", messages: [{ role: "user", content: HELLO }], temperature: 0, max_tokens: 3000, stream: true },
      { signal: controller.signal },
    );
    let seen = 0;
    // Meanwhile, the gateway's view: one running.
    let runningSeen = 0;
    try {
      for await (const _chunk of stream) {
        if (++seen === 5) {
          runningSeen = await sample(server.baseUrl, "vllm:num_requests_running", { model_name: "tiny.q4_0" });
          controller.abort();
        }
      }
    } catch {
      // the SDK may end the loop with its abort error
    }
    expect(seen).toBeLessThan(100);
    expect(runningSeen).toBe(1);
    expect(
      await eventually(
        () => sample(server.baseUrl, "airavata_requests_total", { api: "openai", code: "CANCELLED", finish_reason: "cancelled" }),
        before + 1,
      ),
    ).toBe(before + 1);
    await idle(server.baseUrl);
    expect(await sample(server.baseUrl, "vllm:num_requests_running", { model_name: "tiny.q4_0" })).toBe(0);
    const next = await grpc.generate({ prompt: "The", raw: true, temperature: 0 });
    expect(Number(next.trailers["airavata-queue-ms"])).toBeLessThan(1000);
  });

  it("/metrics parses as Prometheus text and has vLLM's names beside the service's", async () => {
    const text = await (await fetch(`${server.baseUrl}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      // prom-client writes a gauge not measured yet (the event loop's lag, early on) as "Nan".
      expect(line).toMatch(/^[a-zA-Z_:][\w:]*(\{[^}]*\})? (-?[\d.e+-]+|NaN|Nan|[+-]Inf)$/);
    }
    for (const name of ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]) {
      expect(text).toMatch(new RegExp(`^${name}\\{model_name="tiny\\.q4_0"\\} `, "m"));
    }
    const kv = await sample(server.baseUrl, "vllm:kv_cache_usage_perc", { model_name: "tiny.q4_0" });
    expect(kv).toBeGreaterThan(0);
    expect(kv).toBeLessThanOrEqual(1);
    expect(kv).toBe(await sample(server.baseUrl, "airavata_kv_cache_usage_perc", { variant: "tiny.q4_0" }));
    expect(await sample(server.baseUrl, "airavata_requests_total", { api: "openai", code: "OK" })).toBeGreaterThan(0);
  });
});

describe("while the model loads", () => {
  it("a call gets 503, and once it is loaded the same call is served", async () => {
    // The server listens before its model loads; the process reports "listening" first.
    const proc = await startServerProcess(["--model", modelPath("q4_0"), "--threads", "1"]);
    try {
      const call = () =>
        fetch(`http://127.0.0.1:${proc.port}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "The", temperature: 0 }),
        });
      const early = await call();
      expect(early.status).toBe(503);
      expect(((await early.json()) as { error: { type: string; message: string } }).error).toMatchObject({
        type: "service_unavailable",
        message: "no model is loaded; retry shortly",
      });
      let later = await call();
      for (let i = 0; i < 100 && later.status === 503; i++) {
        await new Promise((r) => setTimeout(r, 100));
        later = await call();
      }
      expect(later.status).toBe(200);
      expect(((await later.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe("end of story🙏");
    } finally {
      proc.child.kill("SIGTERM");
      await proc.exited;
    }
  }, 60_000);
});

describe("while the server shuts down", () => {
  it("a new call gets 503", async () => {
    const other = await startTestServer({ gracePeriodMs: 10_000, contextSize: 4096 });
    const c = new AiravataClient(other.address);
    // Long enough to still run while the server waits for it.
    const running = c.generate({ prompt: HELLO, temperature: 0, maxNewTokens: 4000 });
    await new Promise((r) => setTimeout(r, 200));
    const stopping = other.app.shutdown();
    await new Promise((r) => setTimeout(r, 100));
    const res = await fetch(`${other.baseUrl}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "The" }),
    });
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/shutting down/);
    await running;
    c.close();
    await stopping;
  });
});
