import os from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LlamaEngine } from "../../src/engine/child/llama-engine.js";
import type { GenerationInput, SamplingSettings } from "../../src/generation.js";
import type { ThreadDecision } from "../../src/engine/child/thread-tuner.js";
import { modelPath } from "../helpers/models.js";

// The engine in this process (no IPC), to watch exactly how many tokens a
// cancel lets through.
const LOAD = {
  modelPath: modelPath("q8_0"),
  gpu: "cpu",
  threads: 1,
  contextSize: 1024,
  sequences: 2,
  batchSize: 512,
  batching: "measured",
} as const;
let engine: LlamaEngine;
beforeAll(async () => {
  engine = await LlamaEngine.load(LOAD);
});
afterAll(async () => {
  await engine.dispose();
});

const greedy: SamplingSettings = {
  maxNewTokens: 500,
  temperature: 0,
  topK: 40,
  topP: 1,
  minP: 0,
  repeatPenalty: 1,
  seed: 1,
  stop: [],
};
const chat: GenerationInput = { kind: "chat", messages: [{ role: "user", content: "नमस्ते" }] };

describe("LlamaEngine", () => {
  it("reports the backend, threads, slots and context it was given", () => {
    expect(engine.info).toMatchObject({ backend: "cpu", threads: 1, sequences: 2, contextSize: 1024, gpuLayers: 0 });
  });

  it("holds context-size cells per slot, no more: each slot adds one request's KV cache to the memory it needs", async () => {
    // The tiny model's KV cache: 2 layers × (K + V) × 128 values × 2 bytes (F16) = 1 KiB a token.
    const kvBytesPerToken = 2 * 2 * 128 * 2;
    const needs: number[] = [];
    for (const sequences of [1, 4]) {
      const sized = await LlamaEngine.load({ ...LOAD, contextSize: 512, sequences });
      try {
        expect(sized.info.contextSize).toBe(512);
        needs.push((await sized.estimate(modelPath("q8_0"))).ramBytes);
      } finally {
        await sized.dispose();
      }
    }
    expect(needs[1]! - needs[0]!).toBe(3 * 512 * kvBytesPerToken);
  });

  it("timed a decode step of each size at load (batching measured)", () => {
    // Index = tokens in the step: 1 and 2 measured, each a positive time under a second.
    expect(engine.info.stepMs).toHaveLength(3);
    for (const ms of engine.info.stepMs.slice(1)) {
      expect(ms).toBeGreaterThan(0);
      expect(ms).toBeLessThan(1000);
    }
  });

  it("stops within one token of the signal, and the sequence is reusable", async () => {
    const controller = new AbortController();
    let seen = 0;
    let tokensAtAbort = 0;
    const result = await engine.generate(chat, greedy, controller.signal, {
      started: () => {},
      chunk: (e) => {
        seen += e.tokens.length;
        if (seen >= 10 && !controller.signal.aborted) {
          tokensAtAbort = seen;
          controller.abort();
        }
      },
    });
    expect(result.finishReason).toBe("cancelled");
    expect(result.generatedTokens - tokensAtAbort).toBeLessThanOrEqual(1);
    const again = await engine.generate({ kind: "raw", text: "The" }, greedy, new AbortController().signal, {
      started: () => {},
      chunk: () => {},
    });
    expect(again.finishReason).toBe("stop");
  });

  it("two sequences generate side by side with the same text as alone", async () => {
    const collect = async () => {
      let text = "";
      await engine.generate(chat, { ...greedy, maxNewTokens: 60 }, new AbortController().signal, {
        started: () => {},
        chunk: (e) => (text += e.text),
      });
      return text;
    };
    const alone = await collect();
    const [a, b] = await Promise.all([collect(), collect()]);
    expect(a).toBe(alone);
    expect(b).toBe(alone);
  });

  it("refuses a perplexity while a generation runs, and the generation is not disturbed", async () => {
    const collect = async () => {
      let text = "";
      await engine.generate(chat, { ...greedy, maxNewTokens: 40 }, new AbortController().signal, {
        started: () => {},
        chunk: (e) => (text += e.text),
      });
      return text;
    };
    const alone = await collect();
    const running = collect();
    await expect(engine.perplexity("नमस्ते दुनिया", 16)).rejects.toMatchObject({
      kind: "failed_precondition",
      message: "perplexity needs an idle engine: a generation is running",
    });
    expect(await running).toBe(alone);
    // Idle again: the same call scores the text.
    expect((await engine.perplexity("नमस्ते दुनिया", 16)).perplexity).toBeGreaterThan(1);
  });

  it('with threads "auto", starts at the cores less one and picks between that and all the cores while it decodes', async () => {
    const cores = os.availableParallelism();
    const decisions: ThreadDecision[] = [];
    const auto = await LlamaEngine.load({ ...LOAD, threads: "auto", sequences: 1 }, undefined, (d) => decisions.push(d));
    try {
      expect(auto.info.threads).toBe(Math.max(1, cores - 1));
      if (cores < 2) {
        expect(auto.info.threadCandidates).toEqual([]);
        return;
      }
      expect(auto.info.threadCandidates).toEqual([cores - 1, cores]);
      // 6 steps at the first count, then a probe of the other (9 more, or 4 if it is far slower).
      await auto.generate(chat, { ...greedy, maxNewTokens: 120 }, new AbortController().signal, {
        started: () => {},
        chunk: () => {},
      });
      expect(decisions.length).toBeGreaterThanOrEqual(1);
      const first = decisions[0]!;
      expect(first.previous).toBe(cores - 1);
      expect(Object.keys(first.stepMs).map(Number).sort()).toEqual([cores - 1, cores]);
      expect(first.threads).toBe(first.outcome === "switched" ? cores : cores - 1);
      expect(auto.info.threads).toBe(decisions.at(-1)!.threads);
    } finally {
      await auto.dispose();
    }
  });
});
