/** The synthetic models the tests run on, written once by the global setup. */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const MODEL_DIR = fileURLToPath(new URL("../../.cache/test-models", import.meta.url));
export const MODEL_TYPES = ["f16", "q8_0", "q4_0"] as const;
export const modelPath = (type: (typeof MODEL_TYPES)[number] = "q4_0") => join(MODEL_DIR, `tiny.${type}.gguf`);
