/**
 * The catalog of variants: the published Airavata GGUF quantizations (by hf:
 * URI, downloaded on first use), every `.gguf` in the models folder, and an
 * optional manifest. It only reads; variants are chosen by catalog id, and no
 * caller ever gives a path.
 */
import { existsSync, readFileSync } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { ServiceError } from "../errors.js";
import { inspectGguf } from "./gguf-inspect.js";

export interface CatalogEntry {
  id: string;
  /** Where the file comes from: a path, or an hf:/https:/http: URI to download. */
  source: string;
  /** Where the file is (or will be, once downloaded). */
  path: string;
  description: string;
  sha256: string | undefined;
  origin: "builtin" | "folder" | "manifest" | "command-line";
}

const PUBLISHED_REPO = "hf:mradermacher/Airavata-GGUF";

/** The published quantizations of Airavata; q4_k_m is the default. */
export const BUILTIN_VARIANTS: readonly { id: string; file: string; description: string }[] = [
  { id: "q4_k_m", file: "Airavata.Q4_K_M.gguf", description: "Airavata 7B, 4-bit k-quant (medium): the default" },
  { id: "q4_k_s", file: "Airavata.Q4_K_S.gguf", description: "Airavata 7B, 4-bit k-quant (small)" },
  { id: "q5_k_m", file: "Airavata.Q5_K_M.gguf", description: "Airavata 7B, 5-bit k-quant (medium)" },
  { id: "q6_k", file: "Airavata.Q6_K.gguf", description: "Airavata 7B, 6-bit k-quant" },
  { id: "q8_0", file: "Airavata.Q8_0.gguf", description: "Airavata 7B, 8-bit" },
  { id: "f16", file: "Airavata.f16.gguf", description: "Airavata 7B, 16-bit floats (unquantized)" },
];

export const DEFAULT_VARIANT = "q4_k_m";

interface ManifestEntry {
  id: string;
  source: string;
  description?: string;
  sha256?: string;
}

const ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** The id a file in the models folder gets: its name without `.gguf`, lower case. */
export function idForFile(path: string): string {
  return basename(path)
    .replace(/\.gguf$/i, "")
    .toLowerCase()
    .replace(/[^a-z0-9._-]/g, "-");
}

function readManifest(path: string, modelsDir: string): CatalogEntry[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`manifest ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const list = (parsed as { variants?: unknown }).variants;
  if (!Array.isArray(list)) throw new Error(`manifest ${path}: expected {"variants": [...]}`);
  return list.map((raw: ManifestEntry, i) => {
    const where = `manifest ${path}, variants[${i}]`;
    if (typeof raw?.id !== "string" || !ID.test(raw.id)) throw new Error(`${where}: id must match ${ID}`);
    if (typeof raw.source !== "string" || raw.source === "") throw new Error(`${where}: source is required`);
    if (raw.sha256 !== undefined && !/^[0-9a-f]{64}$/i.test(raw.sha256))
      throw new Error(`${where}: sha256 must be 64 hex digits`);
    const remote = /^(hf:|https?:\/\/)/.test(raw.source);
    const fileName = remote ? `${raw.id}.gguf` : raw.source;
    const filePath = remote
      ? join(modelsDir, fileName)
      : isAbsolute(raw.source)
        ? raw.source
        : resolve(dirname(path), raw.source);
    return {
      id: raw.id,
      source: raw.source,
      path: filePath,
      description: raw.description ?? "",
      sha256: raw.sha256?.toLowerCase(),
      origin: "manifest" as const,
    };
  });
}

export interface CatalogOptions {
  modelsDir: string;
  manifestPath?: string;
  /** A file given with --model: listed under its own id. */
  extraFile?: string;
}

export class Catalog {
  private constructor(private readonly entries: ReadonlyMap<string, CatalogEntry>) {}

  /** Reads the catalog as it is now: built-ins, manifest, then the models folder. */
  static async load(options: CatalogOptions): Promise<Catalog> {
    const modelsDir = resolve(options.modelsDir);
    const entries = new Map<string, CatalogEntry>();
    const byPath = new Set<string>();
    const add = (entry: CatalogEntry) => {
      if (entries.has(entry.id) || byPath.has(entry.path)) return;
      entries.set(entry.id, entry);
      byPath.add(entry.path);
    };
    for (const b of BUILTIN_VARIANTS) {
      add({
        id: b.id,
        source: `${PUBLISHED_REPO}/${b.file}`,
        path: join(modelsDir, b.file),
        description: b.description,
        sha256: undefined,
        origin: "builtin",
      });
    }
    if (options.extraFile) {
      const path = resolve(options.extraFile);
      add({
        id: idForFile(path),
        source: path,
        path,
        description: "given with --model",
        sha256: undefined,
        origin: "command-line",
      });
    }
    if (options.manifestPath) for (const entry of readManifest(options.manifestPath, modelsDir)) add(entry);
    if (existsSync(modelsDir)) {
      for (const file of await listGguf(modelsDir)) {
        add({ id: idForFile(file), source: file, path: file, description: "", sha256: undefined, origin: "folder" });
      }
    }
    return new Catalog(entries);
  }

  list(): CatalogEntry[] {
    return [...this.entries.values()];
  }

  /** The entries named by `ids` (`not_found` for an unknown one), or, with none named, every usable downloaded one. */
  async select(ids: readonly string[]): Promise<CatalogEntry[]> {
    if (ids.length > 0) return ids.map((id) => this.get(id));
    const usable: CatalogEntry[] = [];
    for (const entry of this.list()) if ((await inspectGguf(entry.path)).usable) usable.push(entry);
    return usable;
  }

  /** The entry with this id, or `not_found` naming the ids there are. */
  get(id: string): CatalogEntry {
    const entry = this.entries.get(id);
    if (!entry) {
      throw new ServiceError("not_found", `no variant "${id}"; known variants: ${[...this.entries.keys()].join(", ")}`);
    }
    return entry;
  }
}

/** Whether a symbolic link leads to a file (a model kept elsewhere, linked into the folder); false when it leads nowhere. */
async function isFileBehind(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile(),
    () => false,
  );
}

/** `.gguf` files (or links to them) in the folder and its subfolders, skipping hidden ones (downloads in progress). */
async function listGguf(dir: string, depth = 0): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name.startsWith(".")) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory() && depth < 2) out.push(...(await listGguf(path, depth + 1)));
    else if (
      entry.name.toLowerCase().endsWith(".gguf") &&
      (entry.isFile() || (entry.isSymbolicLink() && (await isFileBehind(path))))
    )
      out.push(path);
  }
  return out.sort();
}
