import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { ensureLlamaTool } from "../../src/quantize/llama-tools.js";
import { inspectGguf } from "../../src/variants/gguf-inspect.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, startTestServer } from "../helpers/server.js";

const exec = promisify(execFile);

describe("npm run quantize", () => {
  it("fails with a clear message when the build tools are missing", async () => {
    const path = process.env.PATH;
    process.env.PATH = mkdtempSync(join(tmpdir(), "empty-path-"));
    try {
      await expect(ensureLlamaTool("llama-quantize", { cacheDir: mkdtempSync(join(tmpdir(), "no-cache-")) })).rejects.toThrow(
        /building llama\.cpp's tools needs cmake, c\+\+, git, which are not installed \(on Debian\/Ubuntu: apt-get install cmake g\+\+ git\)/,
      );
    } finally {
      process.env.PATH = path;
    }
  });

  // The first run builds llama-quantize from node-llama-cpp's llama.cpp source
  // (minutes on 2 cores); later runs reuse .cache/llama-tools.
  it(
    "quantizes a generated F16 model to Q4_K_M and Q8_0, and both load and serve",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "airavata-quantize-"));
      const input = join(dir, "tiny.f16.gguf");
      copyFileSync(modelPath("f16"), input);
      const { stdout } = await exec(
        process.execPath,
        ["--import", "tsx", "src/quantize/quantize-cli.ts", input, "q4_k_m", "q8_0"],
        {
          cwd: ROOT,
          maxBuffer: 64 * 1024 * 1024,
        },
      );
      expect(stdout).toMatch(/Q4_K_M: 100%/);
      expect(stdout).toMatch(/tiny\.Q4_K_M\.gguf: Q4_K_M, [\d.]+ MB, [\d.]+ bits per weight/);
      expect(stdout).toMatch(/tiny\.Q8_0\.gguf: Q8_0, [\d.]+ MB, [\d.]+ bits per weight/);
      const q4 = await inspectGguf(join(dir, "tiny.Q4_K_M.gguf"));
      const q8 = await inspectGguf(join(dir, "tiny.Q8_0.gguf"));
      const f16 = await inspectGguf(input);
      if (!q4.usable || !q8.usable || !f16.usable) throw new Error("a quantized file is unusable");
      expect(q4.parameters).toBe(f16.parameters);
      expect(q4.bitsPerWeight).toBeLessThan(q8.bitsPerWeight);
      expect(q8.bitsPerWeight).toBeLessThan(f16.bitsPerWeight);
      for (const file of ["tiny.Q4_K_M.gguf", "tiny.Q8_0.gguf"]) {
        const server = await startTestServer({ modelPath: join(dir, file), modelsDir: dir });
        try {
          const client = new AiravataClient(server.address);
          const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
          client.close();
          expect(outcome.codeName).toBe("OK");
          expect(outcome.text).toBe("end of story🙏");
          expect(outcome.trailers["airavata-variant"]).toBe(file.replace(/\.gguf$/, "").toLowerCase());
        } finally {
          await server.app.shutdown();
        }
      }
    },
    15 * 60_000,
  );
});
