/**
 * `npm run gpu:kit`: packs what a GPU machine without Node.js, a package
 * registry or a network lacks for the device run, in one folder small enough
 * to travel with one command (the device takes 64 MiB with the working tree):
 *
 * - `node.tar.xz`: the Node.js binary running this script;
 * - `app.tar.xz`: the project (src/, bench/, harness/, clients/ but the web
 *   page) with its runtime dependencies only, node-llama-cpp's CUDA package
 *   among them without its all-architecture `libggml-cuda.so` (159 MB; the
 *   device run builds one for its own GPU from the same commit), and its CPU
 *   package (the same kit's CPU run);
 * - `llama-src.tar.xz`: the llama.cpp source of node-llama-cpp's own commit
 *   (from the bundle in its package), the parts the CUDA backend,
 *   llama-server, llama-bench and llama-batched-bench build from;
 * - `run.sh`, the device run's entry (`bench/gpu/run.sh`), and `kit.json`.
 *
 *   npm run gpu:kit -- [--out .gpu-kit] [--limit-mib 60]
 *
 * Everything is made here from what npm installed; nothing of it is committed.
 * Each part is kept under the cache's `gpu-kit/` (Node.js by version, the
 * source by commit, the project by content), so an unchanged kit is rewritten
 * in seconds.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { bundledSource, defaultCacheDir, llamaSourceDir } from "../../src/quantize/llama-tools.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** What the device run needs of the project's own files. */
const APP_PATHS = ["src/", "bench/", "harness/", "clients/", "package.json", "tsconfig.json"];
const APP_SKIP = ["clients/web/", "bench/results/"];
/** Runtime packages the device never loads: other platforms' binaries, types, the CUDA 12 package. */
const SKIP_PACKAGES = [
  "node_modules/@node-llama-cpp/linux-arm64",
  "node_modules/@node-llama-cpp/linux-armv7l",
  "node_modules/@node-llama-cpp/linux-x64-vulkan",
  "node_modules/@node-llama-cpp/linux-x64-cuda-ext",
  "node_modules/typescript",
  "node_modules/@types/node",
];
/** Files left out of the packages kept: the all-architecture CUDA backend, and the llama.cpp bundle (packed apart, trimmed). */
const SKIP_FILES = [/\/libggml-cuda\.so$/, /^node_modules\/node-llama-cpp\/llama\/gitRelease\.bundle$/];
/** What the CUDA backend and the three tools build from (llama.cpp's top-level CMakeLists adds these folders). */
const LLAMA_PATHS = [
  "CMakeLists.txt",
  "app",
  "cmake",
  "common",
  "ggml",
  "include",
  "src",
  "tools",
  "vendor",
  "licenses",
  "LICENSE",
];

export interface KitPart {
  file: string;
  bytes: number;
}

export interface Kit {
  dir: string;
  parts: KitPart[];
  bytes: number;
}

function xzTar(from: string, entries: string[], to: string): void {
  const tmp = `${to}.part`;
  execFileSync("tar", ["-C", from, "-I", "xz -T0 -6", "-cf", tmp, ...entries], { stdio: ["ignore", "ignore", "inherit"] });
  renameSync(tmp, to);
}

/** The runtime dependency closure npm installed, as paths under the checkout. */
function runtimePackages(): string[] {
  const listed = spawnSync("npm", ["ls", "--omit=dev", "--all", "--parseable"], { cwd: ROOT, encoding: "utf8" });
  // npm ls exits non-zero on an extraneous package; the list is still whole.
  const paths = listed.stdout
    .split("\n")
    .map((p) => relative(ROOT, p.trim()))
    .filter((p) => p.startsWith("node_modules/"));
  if (paths.length === 0) throw new Error(`npm ls listed no runtime packages: ${listed.stderr}`);
  return [...new Set(paths)].filter((p) => !SKIP_PACKAGES.some((skip) => p === skip || p.startsWith(`${skip}/`)));
}

/** The Node.js binary, packed once per version (xz of ~100 MB takes a while). */
function packNode(cache: string): string {
  const packed = join(cache, `node-${process.version}-${process.platform}-${process.arch}.tar.xz`);
  if (existsSync(packed)) return packed;
  const stage = join(cache, "node-stage");
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(join(stage, "bin"), { recursive: true });
  copyFileSync(process.execPath, join(stage, "bin", "node"));
  xzTar(stage, ["bin"], packed);
  rmSync(stage, { recursive: true, force: true });
  return packed;
}

/** The trimmed llama.cpp source of the bundle's commit, packed once per commit. */
async function packLlamaSource(cache: string, log: (line: string) => void): Promise<string> {
  const { commit } = bundledSource();
  const packed = join(cache, `llama-src-${commit.slice(0, 12)}.tar.xz`);
  if (existsSync(packed)) return packed;
  const source = await llamaSourceDir({ onProgress: log });
  const tar = `${packed}.tar`;
  execFileSync("git", ["-C", source, "archive", "--format=tar", "--prefix=llama-src/", "-o", tar, "HEAD", ...LLAMA_PATHS]);
  execFileSync("xz", ["-T0", "-6", tar]);
  renameSync(`${tar}.xz`, packed);
  return packed;
}

/** What a staged folder holds, as one hash: every path, link target and file's bytes, in order. */
function contentKey(dir: string): string {
  const hash = createHash("sha256");
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const path = join(rel, entry.name);
      hash.update(`${path}\0`);
      if (entry.isSymbolicLink()) hash.update(`-> ${readlinkSync(join(dir, path))}\0`);
      else if (entry.isDirectory()) walk(path);
      else hash.update(readFileSync(join(dir, path)));
    }
  };
  walk("");
  return hash.digest("hex").slice(0, 16);
}

/**
 * The project and its runtime packages, staged and packed; the same content
 * packed before is reused (the last one is kept in the cache), so a second
 * kit of an unchanged checkout takes seconds, not the xz of ~150 MB.
 */
function packApp(stage: string, cache: string): string {
  rmSync(stage, { recursive: true, force: true });
  const app = join(stage, "app");
  mkdirSync(app, { recursive: true });
  const tracked = execFileSync(
    "git",
    ["-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ...APP_PATHS],
    { encoding: "utf8" },
  )
    .split("\0")
    .filter((f) => f && !APP_SKIP.some((skip) => f.startsWith(skip)) && existsSync(join(ROOT, f)));
  for (const file of tracked) {
    mkdirSync(dirname(join(app, file)), { recursive: true });
    copyFileSync(join(ROOT, file), join(app, file));
  }
  for (const pkg of runtimePackages()) {
    cpSync(join(ROOT, pkg), join(app, pkg), {
      recursive: true,
      // Nested packages come in their own right (npm ls lists them); symlinks (.bin) are not needed.
      filter: (src) => {
        const rel = relative(ROOT, src);
        if (SKIP_FILES.some((re) => re.test(rel))) return false;
        return rel === pkg || !rel.startsWith(`${pkg}/node_modules/`);
      },
      verbatimSymlinks: true,
    });
  }
  const packed = join(cache, `app-${contentKey(app)}.tar.xz`);
  if (!existsSync(packed)) {
    for (const old of readdirSync(cache).filter((f) => /^app-[0-9a-f]+\.tar\.xz$/.test(f))) rmSync(join(cache, old));
    xzTar(stage, ["app"], packed);
  }
  rmSync(stage, { recursive: true, force: true });
  return packed;
}

/** Writes the kit into `out` (replacing what was there) and checks it against `limitBytes`: over it, no kit is left. */
export async function writeKit(out: string, limitBytes: number, log: (line: string) => void = () => {}): Promise<Kit> {
  const cache = join(dirname(defaultCacheDir()), "gpu-kit");
  mkdirSync(cache, { recursive: true });
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  log("packing Node.js");
  copyFileSync(packNode(cache), join(out, "node.tar.xz"));
  log("packing the llama.cpp source");
  copyFileSync(await packLlamaSource(cache, log), join(out, "llama-src.tar.xz"));
  log("packing the project and its runtime dependencies");
  copyFileSync(packApp(join(out, ".stage"), cache), join(out, "app.tar.xz"));
  copyFileSync(join(ROOT, "bench", "gpu", "run.sh"), join(out, "run.sh"));
  const parts = readdirSync(out).map((file) => ({ file, bytes: statSync(join(out, file)).size }));
  const manifest = {
    made: new Date().toISOString(),
    node: process.version,
    llamaCpp: bundledSource().commit,
    nodeLlamaCpp: (
      JSON.parse(readFileSync(join(ROOT, "node_modules", "node-llama-cpp", "package.json"), "utf8")) as { version: string }
    ).version,
    project: spawnSync("git", ["-C", ROOT, "rev-parse", "HEAD"], { encoding: "utf8" }).stdout.trim() || "unknown",
    parts,
  };
  writeFileSync(join(out, "kit.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  parts.push({ file: "kit.json", bytes: statSync(join(out, "kit.json")).size });
  const bytes = parts.reduce((n, p) => n + p.bytes, 0);
  if (bytes > limitBytes) {
    rmSync(out, { recursive: true, force: true });
    const biggest = [...parts].sort((a, b) => b.bytes - a.bytes).map((p) => `${p.file} ${(p.bytes / 2 ** 20).toFixed(1)} MiB`);
    throw new Error(
      `the kit is ${(bytes / 2 ** 20).toFixed(1)} MiB, over the ${(limitBytes / 2 ** 20).toFixed(0)} MiB a device command takes ` +
        `(${biggest.join(", ")}): trim the biggest part (SKIP_PACKAGES and SKIP_FILES in bench/gpu/kit.ts for app.tar.xz)`,
    );
  }
  return { dir: out, parts, bytes };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const opts = new Command("gpu:kit")
    .description("pack what the GPU device run needs into one folder")
    .option("--out <dir>", "kit folder (replaced)", join(ROOT, ".gpu-kit"))
    .option("--limit-mib <n>", "largest kit allowed, MiB (the device takes 64 with the working tree)", "60")
    .parse()
    .opts<{ out: string; limitMib: string }>();
  const started = performance.now();
  try {
    const kit = await writeKit(resolve(opts.out), Number(opts.limitMib) * 2 ** 20, (line) => console.error(line));
    for (const p of kit.parts) console.log(`${p.file.padEnd(18)} ${(p.bytes / 2 ** 20).toFixed(1).padStart(6)} MiB`);
    console.log(
      `${relative(process.cwd(), kit.dir) || "."}: ${(kit.bytes / 2 ** 20).toFixed(1)} MiB in ${((performance.now() - started) / 1000).toFixed(0)} s on ${os.availableParallelism()} cores`,
    );
  } catch (error) {
    console.error(`gpu:kit: ${(error as Error).message}`);
    process.exit(1);
  }
}
