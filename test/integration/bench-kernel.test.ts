import { existsSync } from "node:fs";
import { join } from "node:path";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { describe, expect, it } from "vitest";
import { kernelSpeeds, promptTokenCount } from "../../bench/kernel.js";
import { LlamaEngine } from "../../src/engine/child/llama-engine.js";
import { greedySampling } from "../../src/generation.js";
import { engineCpuBackendDir, loadedCpuVariant } from "../../src/quantize/llama-tools.js";
import { modelPath } from "../helpers/models.js";

// The bench's kernel reference must do the servers' work: the same prompt length, tokens counted the same way.
describe("the bench's kernel reference", () => {
  it("counts a run's tokens over the prompts and all steps but one, as a server's first token comes from its prompt", () => {
    const jsonl = [
      "some log line",
      '{"pp": 25, "tg": 128, "pl": 1, "t_pp": 0.030, "t_tg": 0.448, "t": 0.478}',
      '{"pp": 25, "tg": 128, "pl": 4, "t_pp": 0.100, "t_tg": 1.920, "t": 2.020}',
    ].join("\n");
    const speeds = kernelSpeeds(jsonl, [1, 4]);
    // One stream: 128 tokens in 30 ms of prompt + 127 steps of 3.5 ms.
    expect(speeds.get(1)).toBeCloseTo(128 / (0.03 + 0.0035 * 127), 6);
    // Four: 512 tokens in 100 ms + 127 steps of 15 ms.
    expect(speeds.get(4)).toBeCloseTo(512 / (0.1 + 0.015 * 127), 6);
    expect(() => kernelSpeeds(jsonl, [1, 2, 4])).toThrow("llama-batched-bench gave no result for 2 streams");
  });

  it("feeds prompts as long as the engine's for the same chat", async () => {
    const content = "भारत की राजधानी क्या है? (0)";
    const engine = await LlamaEngine.load({
      modelPath: modelPath("q8_0"),
      gpu: "cpu",
      threads: 1,
      contextSize: 256,
      sequences: 1,
      batchSize: 512,
      batching: "full",
    });
    let engineCount = 0;
    try {
      await engine.generate(
        { kind: "chat", messages: [{ role: "user", content }] },
        greedySampling(1),
        new AbortController().signal,
        {
          started: (count) => (engineCount = count),
          chunk: () => {},
        },
      );
    } finally {
      await engine.dispose();
    }
    expect(engineCount).toBeGreaterThan(10);
    expect(await promptTokenCount(modelPath("q8_0"), content)).toBe(engineCount);
  });

  it("finds the CPU backend module the engine loads among those the peers are given", async () => {
    const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
    try {
      const variant = loadedCpuVariant();
      expect(variant).toMatch(/^[\w-]+$/);
      expect(existsSync(join(engineCpuBackendDir(), `libggml-cpu-${variant}.so`))).toBe(true);
    } finally {
      await llama.dispose();
    }
  });
});
