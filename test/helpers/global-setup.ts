import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { ensureLlamaTool } from "../../src/quantize/llama-tools.js";
import { threadPoolLibrary } from "../../src/engine/thread-pool.js";
import { SHAPES, writeSyntheticModel } from "../../src/synthetic/model.js";
import { MODEL_DIR, MODEL_TYPES, modelPath } from "./models.js";

/** The setup of this vitest process: every test project lists it, and one run serves them all. */
const SETUP = Symbol.for("airavata-serve.test-setup");

export default function setup(): Promise<void> {
  const scope = globalThis as { [SETUP]?: Promise<void> };
  return (scope[SETUP] ??= prepare());
}

async function prepare(): Promise<void> {
  mkdirSync(MODEL_DIR, { recursive: true });
  for (const type of MODEL_TYPES) {
    // Always rewritten: the generator is deterministic and fast, and a stale
    // file from an older generator must never be tested by mistake.
    writeSyntheticModel({ path: modelPath(type), shape: SHAPES.tiny, type, name: "airavata-synthetic-tiny" });
    if (!existsSync(modelPath(type))) throw new Error(`model ${type} was not written`);
  }
  // The quantizer is built before any test runs (minutes, once per machine and
  // llama.cpp version), so the build never competes with timing-sensitive tests.
  const started = Date.now();
  let announced = false;
  let lastPercent = -1;
  await ensureLlamaTool("llama-quantize", {
    onProgress: (line) => {
      if (!announced) console.log("building llama-quantize from node-llama-cpp's llama.cpp source (cached afterwards)…");
      announced = true;
      const percent = Number(/^\[\s*(\d+)%\]/.exec(line)?.[1] ?? -1);
      if (percent >= lastPercent + 10) {
        lastPercent = percent;
        console.log(`  ${line}`);
      }
    },
  });
  if (announced) console.log(`llama-quantize built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  // The engine's thread pool library (seconds, once): built here rather than by the first tests'
  // engines, all at once. The tests that start the service expect it ("persistent" in the load line).
  const pool = await threadPoolLibrary();
  if (!("path" in pool)) throw new Error(`the thread pool library was not built: ${pool.reason}`);
  // The browser playground the service serves at `/` (seconds).
  execFileSync(process.execPath, ["node_modules/vite/bin/vite.js", "build", "clients/web"], { stdio: "inherit" });
}
