import { mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Catalog } from "../../src/variants/catalog.js";

describe("the models folder", () => {
  it("lists a .gguf file linked into it under the link's name, and skips a link that leads nowhere", async () => {
    const elsewhere = mkdtempSync(join(tmpdir(), "airavata-elsewhere-"));
    writeFileSync(join(elsewhere, "kept-here.gguf"), "GGUF");
    const dir = mkdtempSync(join(tmpdir(), "airavata-linked-"));
    symlinkSync(join(elsewhere, "kept-here.gguf"), join(dir, "linked.q4_0.gguf"));
    symlinkSync(join(elsewhere, "gone.gguf"), join(dir, "broken.gguf"));
    writeFileSync(join(dir, "plain.gguf"), "GGUF");
    const catalog = await Catalog.load({ modelsDir: dir, manifestPath: undefined, extraFile: undefined });
    const folder = catalog.list().filter((e) => e.origin === "folder");
    expect(folder.map((e) => e.id)).toEqual(["linked.q4_0", "plain"]);
    expect(catalog.get("linked.q4_0").path).toBe(join(dir, "linked.q4_0.gguf"));
  });
});
