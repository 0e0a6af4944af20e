import { existsSync, mkdirSync } from "node:fs";
import { SHAPES, writeSyntheticModel } from "../../src/synthetic/model.js";
import { MODEL_DIR, MODEL_TYPES, modelPath } from "./models.js";

export default function setup(): void {
  mkdirSync(MODEL_DIR, { recursive: true });
  for (const type of MODEL_TYPES) {
    // Always rewritten: the generator is deterministic and fast, and a stale
    // file from an older generator must never be tested by mistake.
    writeSyntheticModel({ path: modelPath(type), shape: SHAPES.tiny, type, name: "airavata-synthetic-tiny" });
    if (!existsSync(modelPath(type))) throw new Error(`model ${type} was not written`);
  }
}
