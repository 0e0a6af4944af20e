/**
 * llama.cpp's own command-line tools (llama-quantize, …), built once from the
 * llama.cpp source that node-llama-cpp's package carries (a git bundle), and
 * cached by commit. Only the target asked for is built.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface BuildOptions {
  /** Where builds are cached (default: AIRAVATA_TOOLS_CACHE, or ~/.cache/airavata-serve/llama-tools). */
  cacheDir?: string;
  /** Progress lines of the build ("[ 42%] Building …"). */
  onProgress?(line: string): void;
}

/** The git bundle of llama.cpp inside node-llama-cpp's package. */
export function bundledSource(): { bundle: string; commit: string } {
  // node-llama-cpp exports no package.json; find its folder the way Node does, upwards.
  let dir = dirname(fileURLToPath(import.meta.url));
  let bundle: string | undefined;
  for (;;) {
    const candidate = join(dir, "node_modules", "node-llama-cpp", "llama", "gitRelease.bundle");
    if (existsSync(candidate)) {
      bundle = candidate;
      break;
    }
    const up = dirname(dir);
    if (up === dir) throw new Error("node-llama-cpp's llama.cpp source bundle (llama/gitRelease.bundle) was not found");
    dir = up;
  }
  // A git bundle starts with text lines: a signature, then "<sha> <ref>" per head.
  const handle = openSync(bundle, "r");
  const head = Buffer.alloc(512);
  readSync(handle, head, 0, head.length, 0);
  closeSync(handle);
  const commit = /^([0-9a-f]{40}) /m.exec(head.toString("latin1"))?.[1];
  if (!commit) throw new Error(`${bundle} is not a git bundle`);
  return { bundle, commit };
}

/** Shared by every clone on the machine: a build takes minutes. */
export function defaultCacheDir(): string {
  if (process.env.AIRAVATA_TOOLS_CACHE) return process.env.AIRAVATA_TOOLS_CACHE;
  return join(process.env.XDG_CACHE_HOME ?? join(os.homedir(), ".cache"), "airavata-serve", "llama-tools");
}

/** Fails with one clear sentence when a tool the build needs is missing. */
function requireTools(): void {
  const missing = [
    ["cmake", "--version"],
    ["c++", "--version"],
    ["git", "--version"],
  ].filter(([cmd, arg]) => spawnSync(cmd!, [arg!], { stdio: "ignore" }).status !== 0);
  if (missing.length > 0) {
    throw new Error(
      `building llama.cpp's tools needs ${missing.map(([c]) => c).join(", ")}, which ` +
        `${missing.length > 1 ? "are" : "is"} not installed (on Debian/Ubuntu: apt-get install cmake g++ git)`,
    );
  }
}

function run(cmd: string, args: string[], cwd: string, onLine?: (line: string) => void): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let tail = "";
    const onData = (data: Buffer) => {
      const text = data.toString();
      tail = (tail + text).slice(-4000);
      for (const line of text.split("\n")) if (line.trim()) onLine?.(line.trim());
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0 ? resolvePromise() : reject(new Error(`${cmd} ${args.join(" ")} failed (exit ${code}):\n${tail}`)),
    );
  });
}

/** Path of llama.cpp tool `target`, building it first if this commit's build lacks it. */
export async function ensureLlamaTool(target: string, options: BuildOptions = {}): Promise<string> {
  const { bundle, commit } = bundledSource();
  const root = resolve(options.cacheDir ?? defaultCacheDir(), commit.slice(0, 12));
  const binary = join(root, "build", "bin", target);
  if (existsSync(binary)) return binary;
  requireTools();
  const source = join(root, "src");
  if (!existsSync(join(source, "CMakeLists.txt"))) {
    rmSync(source, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
    options.onProgress?.(`extracting llama.cpp ${commit.slice(0, 12)} from node-llama-cpp's bundle`);
    await run("git", ["clone", "--quiet", bundle, source], root);
  }
  options.onProgress?.(`configuring the build of ${target}`);
  await run(
    "cmake",
    [
      "-S",
      source,
      "-B",
      join(root, "build"),
      "-DCMAKE_BUILD_TYPE=Release",
      "-DLLAMA_CURL=OFF",
      "-DGGML_NATIVE=ON",
      "-DLLAMA_BUILD_TESTS=OFF",
      "-DLLAMA_BUILD_EXAMPLES=OFF",
      // On, so llama-server can be built (the bench compares against it); only the target asked for is built.
      "-DLLAMA_BUILD_SERVER=ON",
      "-DLLAMA_BUILD_UI=OFF",
      // One self-contained binary per tool: no shared libraries to find at run time.
      "-DBUILD_SHARED_LIBS=OFF",
    ],
    root,
  );
  await run(
    "cmake",
    ["--build", join(root, "build"), "--target", target, "-j", String(os.availableParallelism())],
    root,
    (line) => {
      if (/^\[\s*\d+%\]/.test(line)) options.onProgress?.(line);
    },
  );
  if (!existsSync(binary)) throw new Error(`the build finished but ${binary} is not there`);
  return binary;
}
