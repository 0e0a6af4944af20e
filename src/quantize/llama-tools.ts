/**
 * llama.cpp's own command-line tools (llama-quantize, …), built once from the
 * llama.cpp source that node-llama-cpp's package carries (a git bundle), and
 * cached by commit. Only the target asked for is built.
 *
 * One build serves every tool: built with `GGML_BACKEND_DL` and no CPU
 * backend of its own, it loads node-llama-cpp's prebuilt CPU backend modules,
 * copied beside it, and picks among their variants by the same scoring the
 * engine does. So the bench's peers (llama-server, llama-batched-bench,
 * llama-bench) run the very kernels the engine runs (a `GGML_NATIVE` build is
 * no fair peer: on an Intel Xeon with AMX it died at its first decode, and
 * built without AMX it decoded a 7B Q4_0 2.5× slower than the prebuilt), and
 * the quantizer skips compiling a CPU backend: cold on a 2-core AMD EPYC,
 * 274 s against 351 s for a native build, with byte-identical output
 * (bench/notes.md, "A fair peer").
 */
import { spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
} from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface BuildOptions {
  /** Where builds are cached (default: AIRAVATA_TOOLS_CACHE, or ~/.cache/airavata-serve/llama-tools). */
  cacheDir?: string;
  /** Progress lines of the build ("[ 42%] Building …"). */
  onProgress?(line: string): void;
}

/** `relative` under the nearest node_modules above this file, the way Node finds packages (they export no package.json). */
function inNodeModules(relative: string): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "node_modules", relative);
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

/** The git bundle of llama.cpp inside node-llama-cpp's package. */
export function bundledSource(): { bundle: string; commit: string } {
  const bundle = inNodeModules(join("node-llama-cpp", "llama", "gitRelease.bundle"));
  if (!bundle) throw new Error("node-llama-cpp's llama.cpp source bundle (llama/gitRelease.bundle) was not found");
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

/** Runs a build step; rejects with the command and the tail of what it printed when it fails. */
export function run(cmd: string, args: string[], cwd: string, onLine?: (line: string) => void): Promise<void> {
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

/** A CPU backend module of ggml's: `libggml-cpu-<variant>.so` (or `libggml-cpu.so` for a build with one). */
const CPU_BACKEND = /^libggml-cpu.*\.(so|dylib|dll)$/;

/**
 * The folder of the CPU backend modules the engine loads: node-llama-cpp's
 * prebuilt for this platform (`libggml-cpu-<variant>.so`, one per CPU family).
 */
export function engineCpuBackendDir(): string {
  const platform = `${process.platform === "darwin" ? "mac" : process.platform}-${process.arch}`;
  const dir = inNodeModules(join("@node-llama-cpp", platform, "bins", platform));
  if (!dir || !readdirSync(dir).some((f) => CPU_BACKEND.test(f))) {
    throw new Error(`node-llama-cpp's prebuilt CPU backend for ${platform} was not found (@node-llama-cpp/${platform})`);
  }
  return dir;
}

/** The CPU backend variant a running process has loaded ("sapphirerapids", "zen4", …), from its memory map. */
export function loadedCpuVariant(pid: number | "self" = "self"): string | undefined {
  try {
    return /libggml-cpu-?([\w-]*)\.(?:so|dylib|dll)/.exec(readFileSync(`/proc/${pid}/maps`, "utf8"))?.[1] || "generic";
  } catch {
    return undefined;
  }
}

/** The build folder, and what the build adds to the shared settings. */
const BUILD = {
  dir: "build-engine-kernels",
  // No CPU backend of its own: it loads the engine's (copied beside the tools) at run time.
  flags: ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU=OFF"],
};

/**
 * Copies the engine's CPU backend modules next to the tools, where ggml looks
 * for backends: those missing there, or not the same size (node-llama-cpp was
 * reinstalled with other binaries of the same commit).
 */
function installEngineKernels(binDir: string): void {
  const from = engineCpuBackendDir();
  for (const file of readdirSync(from).filter((f) => CPU_BACKEND.test(f))) {
    const source = join(from, file);
    const target = join(binDir, file);
    if (!existsSync(target) || statSync(target).size !== statSync(source).size) copyFileSync(source, target);
  }
}

/** The cache folder of node-llama-cpp's llama.cpp commit: its source clone and its builds. */
export function commitDir(options: BuildOptions = {}): string {
  return resolve(options.cacheDir ?? defaultCacheDir(), bundledSource().commit.slice(0, 12));
}

/**
 * The llama.cpp source of node-llama-cpp's commit, a git clone of its bundle
 * in the cache (made on first use): what the tools and the GPU kit build from.
 */
export async function llamaSourceDir(options: BuildOptions = {}): Promise<string> {
  const { bundle, commit } = bundledSource();
  const root = commitDir(options);
  const source = join(root, "src");
  if (!existsSync(join(source, "CMakeLists.txt"))) {
    rmSync(source, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
    options.onProgress?.(`extracting llama.cpp ${commit.slice(0, 12)} from node-llama-cpp's bundle`);
    await run("git", ["clone", "--quiet", bundle, source], root);
  }
  return source;
}

/** The folder of the engine-kernel build's binaries (llama-server, … once built). */
export function llamaToolsBinDir(options: BuildOptions = {}): string {
  return join(commitDir(options), BUILD.dir, "bin");
}

/** Path of llama.cpp tool `target`, building it first if this commit's build lacks it. */
export async function ensureLlamaTool(target: string, options: BuildOptions = {}): Promise<string> {
  const root = commitDir(options);
  const build = BUILD;
  const binDir = llamaToolsBinDir(options);
  const binary = join(binDir, target);
  if (existsSync(binary)) {
    installEngineKernels(binDir);
    return binary;
  }
  requireTools();
  const source = await llamaSourceDir(options);
  options.onProgress?.(`configuring the build of ${target}`);
  await run(
    "cmake",
    [
      "-S",
      source,
      "-B",
      join(root, build.dir),
      "-DCMAKE_BUILD_TYPE=Release",
      "-DLLAMA_CURL=OFF",
      "-DLLAMA_BUILD_TESTS=OFF",
      "-DLLAMA_BUILD_EXAMPLES=OFF",
      // On, so llama-server can be built (the bench compares against it); only the target asked for is built.
      "-DLLAMA_BUILD_SERVER=ON",
      "-DLLAMA_BUILD_UI=OFF",
      ...build.flags,
    ],
    root,
  );
  await run(
    "cmake",
    ["--build", join(root, build.dir), "--target", target, "-j", String(os.availableParallelism())],
    root,
    (line) => {
      if (/^\[\s*\d+%\]/.test(line)) options.onProgress?.(line);
    },
  );
  if (!existsSync(binary)) throw new Error(`the build finished but ${binary} is not there`);
  installEngineKernels(binDir);
  return binary;
}
