import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient, type GenerateInit } from "../../clients/grpc-client.js";
import { commonPrefix } from "../../src/engine/child/decode-loop.js";
import { formatAiravataChat } from "../../src/engine/child/chat-format.js";
import type { ChatTurn } from "../../src/generation.js";
import { eventually, sample } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// A system prompt apps put in front of every question, long enough to matter.
const SYSTEM = `You are a careful assistant for Hindi and English. ${"Answer briefly and politely. ".repeat(12)}`;
const SETTINGS = { contextSize: 2048, parallel: 4, batchSize: 64 } as const;

let cached: TestServer;
let uncached: TestServer;
let withCache: AiravataClient;
let withoutCache: AiravataClient;

beforeAll(async () => {
  [cached, uncached] = await Promise.all([
    startTestServer({ ...SETTINGS, prefixCache: true }),
    startTestServer({ ...SETTINGS, prefixCache: false }),
  ]);
  withCache = new AiravataClient(cached.address);
  withoutCache = new AiravataClient(uncached.address);
});
afterAll(async () => {
  withCache.close();
  withoutCache.close();
  await Promise.all([cached.app.shutdown(), uncached.app.shutdown()]);
});

async function call(client: AiravataClient, request: GenerateInit) {
  const outcome = await client.generate({ temperature: 0, maxNewTokens: 16, ...request });
  expect(outcome.codeName).toBe("OK");
  return {
    text: outcome.text,
    tokens: outcome.responses.flatMap((r) => r.tokenIds),
    cached: Number(outcome.trailers["airavata-cached-prompt-tokens"]),
    promptTokens: Number(outcome.trailers["airavata-prompt-tokens"]),
    finish: outcome.trailers["airavata-finish-reason"],
    metricsCached: outcome.metrics?.cachedPromptTokens,
  };
}

/** The engine's prompt tokens for a chat: BOS, then the formatted text as plain text. */
async function promptTokens(client: AiravataClient, turns: ChatTurn[]): Promise<number[]> {
  const { response } = await client.tokenize(formatAiravataChat(turns));
  const bos = (await client.tokenize("<s>", { special: true })).response!.tokenIds;
  return [...bos, ...response!.tokenIds];
}

/** A conversation of `turns` user messages, each answered by the server; the answers and each turn's outcome. */
async function conversation(client: AiravataClient, questions: string[], system = SYSTEM) {
  const turns: ChatTurn[] = [{ role: "system", content: system }];
  const outcomes: Awaited<ReturnType<typeof call>>[] = [];
  for (const question of questions) {
    turns.push({ role: "user", content: question });
    const outcome = await call(client, { messages: turns.map((t) => ({ ...t })) });
    outcomes.push(outcome);
    turns.push({ role: "assistant", content: outcome.text });
  }
  return { turns, outcomes };
}

describe("prefix cache", () => {
  it("a five-turn chat: the same greedy text as without the cache; turns after the first start from their cached tokens", async () => {
    const questions = ["नमस्ते", "भारत की राजधानी क्या है?", "और?", "धन्यवाद", "Tell me more"];
    const a = await conversation(withCache, questions);
    const b = await conversation(withoutCache, questions);
    expect(a.outcomes.map((o) => o.tokens)).toEqual(b.outcomes.map((o) => o.tokens));
    expect(b.outcomes.map((o) => o.cached)).toEqual([0, 0, 0, 0, 0]);
    expect(a.outcomes[0]!.cached).toBe(0);
    for (let turn = 1; turn < questions.length; turn++) {
      const outcome = a.outcomes[turn]!;
      // What the slot holds after the turn before: that turn's prompt and the tokens generated and fed
      // (all of them when it ended on end-of-sequence; all but the last when it ran to its length).
      const before = a.outcomes[turn - 1]!;
      const previous = await promptTokens(withCache, a.turns.slice(0, 2 * turn));
      const fed = before.finish === "length" ? before.tokens.slice(0, -1) : before.tokens;
      const prompt = await promptTokens(withCache, a.turns.slice(0, 2 * turn + 2));
      expect(outcome.promptTokens).toBe(prompt.length);
      expect(outcome.cached).toBe(Math.min(commonPrefix(prompt, [...previous, ...fed]), prompt.length - 1));
      // The answer sent back tokenizes as it was generated, so the cache covers it too.
      expect(outcome.cached).toBe(previous.length + fed.length);
      expect(outcome.metricsCached).toBe(outcome.cached);
    }
  });

  it("two questions behind one system prompt: the second starts from the shared prompt, with the same text", async () => {
    const system = `Shared prompt test. ${SYSTEM}`;
    const first = await call(withCache, {
      messages: [
        { role: "system", content: system },
        { role: "user", content: "नमस्ते" },
      ],
    });
    const second = await call(withCache, {
      messages: [
        { role: "system", content: system },
        { role: "user", content: "hello" },
      ],
    });
    const reference = await call(withoutCache, {
      messages: [
        { role: "system", content: system },
        { role: "user", content: "hello" },
      ],
    });
    expect(second.tokens).toEqual(reference.tokens);
    const shared = commonPrefix(
      await promptTokens(withCache, [
        { role: "system", content: system },
        { role: "user", content: "नमस्ते" },
      ]),
      await promptTokens(withCache, [
        { role: "system", content: system },
        { role: "user", content: "hello" },
      ]),
    );
    expect(shared).toBeGreaterThan(50);
    // The first shares only the chat format's opening with anything cached before it.
    expect(first.cached).toBeLessThan(10);
    expect(second.cached).toBe(shared);
  });

  it("four conversations interleaved over four slots each find their own slot again", async () => {
    const systems = [0, 1, 2, 3].map((i) => `Conversation ${i}: ${SYSTEM}`);
    const turns = systems.map((system) => [
      { role: "system", content: system },
      { role: "user", content: "नमस्ते" },
    ]);
    const firsts = await Promise.all(turns.map((t) => call(withCache, { messages: t })));
    const seconds = await Promise.all(
      turns.map((t, i) =>
        call(withCache, { messages: [...t, { role: "assistant", content: firsts[i]!.text }, { role: "user", content: "और?" }] }),
      ),
    );
    for (let i = 0; i < 4; i++) {
      const own = await promptTokens(withCache, turns[i] as ChatTurn[]);
      // Each found its own first turn whole (more than the few tokens the systems share).
      expect(seconds[i]!.cached).toBeGreaterThanOrEqual(own.length);
    }
  });

  it("a call cancelled mid-prompt leaves its slot consistent: the same conversation then answers as without the cache", async () => {
    const messages = [
      { role: "system", content: SYSTEM.repeat(4) },
      { role: "user", content: "भारत की राजधानी क्या है?" },
    ];
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 15);
    const cancelled = await withCache.generate({ messages, temperature: 0, maxNewTokens: 16 }, undefined, {
      signal: controller.signal,
    });
    expect(cancelled.codeName).toBe("CANCELLED");
    const again = await call(withCache, { messages });
    const reference = await call(withoutCache, { messages });
    expect(again.tokens).toEqual(reference.tokens);
  });

  it("Prometheus counts prompt tokens by source and the hits; the KV-cache gauge rises with what slots keep", async () => {
    const variant = cached.app.pool.current!.entry.id;
    const usageBefore = await sample(cached.baseUrl, "airavata_kv_cache_usage_perc", { variant });
    const hitsBefore = await sample(cached.baseUrl, "airavata_prefix_cache_hits_total", { variant });
    const cachedBefore = await sample(cached.baseUrl, "airavata_prompt_tokens_by_source_total", { variant, source: "cached" });
    const { outcomes } = await conversation(withCache, ["Question one", "Question two"], `Gauge test. ${SYSTEM}`);
    // A first turn may share the chat format's opening with an earlier call: a hit of a few tokens.
    expect(outcomes[1]!.cached).toBeGreaterThan(100);
    const hits = outcomes.filter((o) => o.cached > 0).length;
    expect(await sample(cached.baseUrl, "airavata_prefix_cache_hits_total", { variant })).toBe(hitsBefore + hits);
    expect(await sample(cached.baseUrl, "airavata_prompt_tokens_by_source_total", { variant, source: "cached" })).toBe(
      cachedBefore + outcomes[0]!.cached + outcomes[1]!.cached,
    );
    const usage = await sample(cached.baseUrl, "airavata_kv_cache_usage_perc", { variant });
    expect(usage).toBeGreaterThan(0);
    expect(usage).toBeLessThanOrEqual(1);
    expect(usage).not.toBe(usageBefore);
    expect(await sample(uncached.baseUrl, "airavata_kv_cache_usage_perc", { variant })).toBe(0);
  });
});

describe("prefix cache, one slot", () => {
  let server: TestServer;
  let client: AiravataClient;
  beforeAll(async () => {
    server = await startTestServer({ ...SETTINGS, parallel: 1 });
    client = new AiravataClient(server.address);
  });
  afterAll(async () => {
    client.close();
    await server.app.shutdown();
  });

  it("the gauge falls when the slot is reused by another prompt; after an engine kill the first call finds nothing cached", async () => {
    const variant = server.app.pool.current!.entry.id;
    const long = {
      messages: [
        { role: "system", content: SYSTEM.repeat(3) },
        { role: "user", content: "नमस्ते" },
      ],
    };
    const first = await call(client, long);
    const high = await sample(server.baseUrl, "airavata_kv_cache_usage_perc", { variant });
    expect(high).toBeGreaterThan(0);
    expect((await call(client, long)).cached).toBe(first.promptTokens - 1);
    await call(client, { prompt: "hello", raw: true });
    expect(await sample(server.baseUrl, "airavata_kv_cache_usage_perc", { variant })).toBeLessThan(high);
    // A new engine starts empty.
    const pid = server.app.pool.current!.engine.pid!;
    await call(client, long);
    process.kill(pid, "SIGKILL");
    const restarted = () => sample(server.baseUrl, "airavata_engine_events_total", { variant, event: "restarted" });
    expect(await eventually(restarted, 1, 30_000)).toBe(1);
    expect(server.app.pool.current!.engine.pid).not.toBe(pid);
    const after = await call(client, long);
    expect(after.cached).toBe(0);
    expect(after.tokens).toEqual(first.tokens);
  });
});
