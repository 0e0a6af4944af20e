/**
 * The import graph's one-way rules, read from the source: a client printing
 * a report must not load the engine (node-llama-cpp takes a second to import
 * and needs its native binaries), and the layers above the engine speak of a
 * generation in the domain's types, not the engine's IPC format.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

const IMPORT = /^\s*(?:import|export)\s[^;]*?from\s+"([^"]+)";/gms;

/** The modules `file` imports: project files as paths relative to the root, packages by name. */
function importsOf(file: string): string[] {
  const source = readFileSync(join(ROOT, file), "utf8");
  return [...source.matchAll(IMPORT)].map(([, spec]) =>
    spec!.startsWith(".") ? relative(ROOT, resolve(ROOT, dirname(file), spec!.replace(/\.js$/, ".ts"))) : spec!,
  );
}

/** Every module `entry` loads, directly or not. */
function reachable(entry: string): Set<string> {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    if (file.endsWith(".ts")) for (const next of importsOf(file)) visit(next);
  };
  visit(entry);
  return seen;
}

const tsFiles = (dir: string) =>
  readdirSync(join(ROOT, dir))
    .filter((f) => f.endsWith(".ts"))
    .map((f) => join(dir, f));

describe("layering", () => {
  it.each(["clients/cli.ts", "clients/grpc-client.ts"])("%s loads neither the engine nor node-llama-cpp", (entry) => {
    const loaded = [...reachable(entry)];
    expect(loaded.filter((m) => m.startsWith("node-llama-cpp") || m.startsWith("src/engine/"))).toEqual([]);
    // The graph was really walked: the CLI reaches the generated protobuf code.
    expect(loaded.some((m) => m.startsWith("src/gen/"))).toBe(true);
  });

  it("variants import nothing from scheduling: the serving pool uses the loader, not the other way", () => {
    const files = tsFiles("src/variants");
    expect(files).toContain("src/variants/variant-loader.ts");
    expect(importsOf("src/scheduling/serving-pool.ts")).toContain("src/variants/variant-loader.ts");
    const offenders = files.flatMap((f) =>
      importsOf(f)
        .filter((m) => m.startsWith("src/scheduling/"))
        .map((m) => `${f} → ${m}`),
    );
    expect(offenders).toEqual([]);
  });

  it("services, scheduling and metrics do not import the engine's IPC protocol", () => {
    const files = ["src/services", "src/scheduling", "src/metrics"].flatMap(tsFiles);
    expect(files.length).toBeGreaterThan(5);
    const offenders = files.filter((f) => importsOf(f).includes("src/engine/protocol.ts"));
    expect(offenders).toEqual([]);
  });
});
