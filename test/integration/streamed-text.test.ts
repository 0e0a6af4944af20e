import { getLlama, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient, type GenerateInit } from "../../clients/grpc-client.js";
import { FinishReason } from "../../src/gen/airavata/v1/generation_pb.js";
import { AUTO_STREAM_INTERVAL, type StreamInterval } from "../../src/generation.js";
import { CHAT_SCRIPT } from "../../src/synthetic/model.js";
import { modelPath } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let server: TestServer;
let client: AiravataClient;
let model: LlamaModel;

beforeAll(async () => {
  server = await startTestServer();
  client = new AiravataClient(server.address);
  // An independent detokenizer: the same file, loaded in the test's own process.
  const llama = await getLlama({ gpu: false, maxThreads: 1 });
  model = await llama.loadModel({ modelPath: modelPath("q4_0") });
});
afterAll(async () => {
  client.close();
  await model.dispose();
  await server.app.shutdown();
});

async function generate(request: GenerateInit) {
  const outcome = await client.generate(request);
  expect(outcome.codeName).toBe("OK");
  const chunks = outcome.responses.map((r) => r.text).filter((t) => t !== "");
  const tokens = outcome.responses.flatMap((r) => r.tokenIds);
  return { outcome, chunks, tokens, detokenized: model.detokenize(tokens as Token[]) };
}

function expectWholeCharacters(chunks: string[]) {
  for (const chunk of chunks) {
    expect(chunk.isWellFormed()).toBe(true);
    expect(chunk).not.toContain("\uFFFD");
  }
}

/** Tokens the chat script generates up to and including ॐ's last byte. */
const UNTIL_OM = CHAT_SCRIPT.indexOf("<0x90>");

describe("streamed text is whole UTF-8 and adds up to the detokenized output", () => {
  it("when a character arrives as three byte tokens in the middle", async () => {
    const { chunks, tokens, detokenized, outcome } = await generate({ prompt: "नमस्ते", maxNewTokens: 40, temperature: 0 });
    expect(tokens).toHaveLength(40);
    expectWholeCharacters(chunks);
    expect(chunks).toContain("ॐ");
    expect(chunks.join("")).toBe(detokenized);
    expect(outcome.text).toContain("serve. ॐ शांति");
  });

  it("when the split character is the last one (max_new_tokens ends on it)", async () => {
    const { chunks, detokenized, outcome } = await generate({ prompt: "नमस्ते", maxNewTokens: UNTIL_OM, temperature: 0 });
    expectWholeCharacters(chunks);
    expect(chunks.at(-1)).toBe("ॐ");
    expect(chunks.join("")).toBe(detokenized);
    expect(outcome.responses.at(-1)?.finishReason).toBe(FinishReason.LENGTH);
  });

  it("when a four-byte character ends the generation before end-of-sequence", async () => {
    const { chunks, detokenized, outcome } = await generate({ prompt: "The", raw: true, temperature: 0 });
    expectWholeCharacters(chunks);
    expect(chunks.join("")).toBe(detokenized);
    expect(outcome.text).toBe(" end of story🙏".trimStart());
    expect(chunks.at(-1)).toBe("🙏");
    expect(outcome.responses.at(-1)?.finishReason).toBe(FinishReason.STOP);
    expect(outcome.trailers["airavata-finish-reason"]).toBe("stop");
  });
});

describe("sampling settings are honoured", () => {
  // After "hello" the synthetic model has no script, so its next-token
  // distribution is broad and sampling settings visibly matter.
  const base = { prompt: "hello", raw: true, maxNewTokens: 24 } satisfies GenerateInit;

  it("the same seed gives the same text, another seed another text", async () => {
    const a = await generate({ ...base, temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1 });
    const b = await generate({ ...base, temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1 });
    const c = await generate({ ...base, temperature: 1, topK: 0, topP: 1, minP: 0, seed: 2 });
    expect(a.tokens).toEqual(b.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it("top_k 1, a tiny top_p and min_p 1 each reduce sampling to the greedy choice", async () => {
    const greedy = await generate({ ...base, temperature: 0 });
    const sampled = await generate({ ...base, temperature: 1, topK: 0, topP: 1, minP: 0, seed: 3 });
    expect(sampled.tokens).not.toEqual(greedy.tokens);
    for (const narrowed of [{ topK: 1 }, { topP: 1e-6, topK: 0 }, { minP: 1, topK: 0 }]) {
      const out = await generate({ ...base, temperature: 1, seed: 3, ...narrowed });
      expect(out.tokens).toEqual(greedy.tokens);
    }
  });

  it("a strong repeat penalty changes the greedy text, and the slot's next call is plain again", async () => {
    const request = { prompt: "भारत की राजधानी क्या है?", maxNewTokens: 48, temperature: 0 };
    const plain = await generate({ ...request, repeatPenalty: 1 });
    const penalised = await generate({ ...request, repeatPenalty: 10 });
    expect(penalised.tokens).not.toEqual(plain.tokens);
    // The same prompt returns to the slot that holds it, and to that slot's sampler.
    const again = await generate({ ...request, repeatPenalty: 1 });
    expect(Number(again.outcome.trailers["airavata-cached-prompt-tokens"])).toBeGreaterThan(0);
    expect(again.tokens).toEqual(plain.tokens);
  });

  it("stops before a stop string, which is never sent", async () => {
    const { outcome } = await generate({ prompt: "नमस्ते", temperature: 0, stop: ["मॉडल", "zzz"] });
    expect(outcome.text).toBe("नमस्ते! मैं एक छोटा परीक्षण ");
    expect(outcome.responses.at(-1)?.finishReason).toBe(FinishReason.STOP_SEQUENCE);
    expect(outcome.trailers["airavata-finish-reason"]).toBe("stop_sequence");
  });
});

/**
 * `request` on `client` (a server with a stream interval above 1) against the default server: the
 * same text, tokens, finish and count, whole characters in every message, the first token alone.
 * Returns the paced outcome and the reference for the interval's own checks.
 */
async function expectSameStream(client: AiravataClient, request: GenerateInit) {
  const reference = await generate(request);
  const outcome = await client.generate(request);
  expect(outcome.codeName).toBe("OK");
  expect(outcome.text).toBe(reference.outcome.text);
  expect(outcome.responses.flatMap((r) => r.tokenIds)).toEqual(reference.tokens);
  expect(outcome.responses[0]?.tokenIds).toHaveLength(1);
  expect(outcome.responses.at(-1)?.finishReason).toBe(reference.outcome.responses.at(-1)?.finishReason);
  expect(Number(outcome.trailers["airavata-generated-tokens"])).toBe(reference.tokens.length);
  for (const r of outcome.responses) expect(r.text.isWellFormed() && !r.text.includes("\uFFFD")).toBe(true);
  return { outcome, reference };
}

/** A server with this stream interval for the enclosing `describe`; call the result for its client. */
function serverPacedBy(streamInterval: StreamInterval): () => AiravataClient {
  let paced: TestServer;
  let client: AiravataClient;
  beforeAll(async () => {
    paced = await startTestServer({ streamInterval });
    client = new AiravataClient(paced.address);
  });
  afterAll(async () => {
    client.close();
    await paced.app.shutdown();
  });
  return () => client;
}

describe("--stream-interval 4", () => {
  const batchedClient = serverPacedBy({ tokens: 4 });

  it.each([
    ["40 tokens with a three-byte character inside", { prompt: "नमस्ते", maxNewTokens: 40, temperature: 0 }],
    ["a generation that ends on end-of-sequence", { prompt: "The", raw: true, temperature: 0 }],
    ["a stop string", { prompt: "नमस्ते", temperature: 0, stop: ["मॉडल"] }],
  ] satisfies [string, GenerateInit][])(
    "%s: the first token alone, then four at a time; the same text and tokens",
    async (_, request) => {
      const { outcome, reference } = await expectSameStream(batchedClient(), request);
      const sizes = outcome.responses.map((r) => r.tokenIds.length);
      // Every message between the first and the last carries at least four tokens; the last, what was left.
      for (const size of sizes.slice(1, -1)) expect(size).toBeGreaterThanOrEqual(4);
      expect(sizes.length).toBeLessThanOrEqual(2 + Math.ceil((reference.tokens.length - 1) / 4));
    },
  );
});

describe("the default stream interval (auto: up to 8 tokens, held at most 50 ms)", () => {
  const autoClient = serverPacedBy(AUTO_STREAM_INTERVAL);

  // The tiny model decodes a token in well under a millisecond here, so tokens share messages.
  it.each([
    ["40 tokens with a three-byte character inside", { prompt: "नमस्ते", maxNewTokens: 40, temperature: 0 }],
    ["a stop string", { prompt: "नमस्ते", temperature: 0, stop: ["मॉडल"] }],
  ] satisfies [string, GenerateInit][])(
    "%s: the first token alone, then tokens grouped; the same text and tokens",
    async (_, request) => {
      const { outcome, reference } = await expectSameStream(autoClient(), request);
      expect(outcome.responses.length).toBeLessThan(reference.outcome.responses.length);
    },
  );
});

describe("--stream-interval 50ms", () => {
  const pacedClient = serverPacedBy({ ms: 50 });

  // The tiny model decodes a token in well under a millisecond here, so 50 ms holds many.
  it.each([
    ["200 tokens with three-byte characters inside", { prompt: "नमस्ते", maxNewTokens: 200, temperature: 0 }],
    ["a generation that ends on end-of-sequence", { prompt: "The", raw: true, temperature: 0 }],
    ["a stop string", { prompt: "नमस्ते", temperature: 0, stop: ["मॉडल"] }],
  ] satisfies [string, GenerateInit][])(
    "%s: the first token alone, then tokens grouped; the same text and tokens",
    async (_, request) => {
      const { outcome, reference } = await expectSameStream(pacedClient(), request);
      expect(outcome.responses.length).toBeLessThan(reference.outcome.responses.length);
    },
  );
});
