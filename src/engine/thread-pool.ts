/**
 * The persistent thread pool (native/persistent-thread-pool.c): a small
 * library preloaded into the engine process that gives node-llama-cpp's
 * contexts a ggml thread pool kept between decodes, where its prebuilt addon
 * starts and joins the decode threads at every token (bench/notes.md,
 * "A persistent thread pool": one stream at 2 threads 0.64–0.72× llama-server's
 * tokens/s without it, 0.98–1.03× with it, in pairs on a 2-core Zen 4).
 *
 * It is compiled on first use against the headers of the llama.cpp commit
 * node-llama-cpp carries (its source bundle, cloned once for llama.cpp's
 * tools too), and cached by commit and source: a C compiler and git, about
 * two seconds once. Where either is missing the engine decodes as
 * node-llama-cpp does by itself, and the load line says why.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { commitDir, llamaSourceDir, run } from "../quantize/llama-tools.js";
import type { ThreadPool } from "../generation.js";
import { PRELOADED_MARK } from "./protocol.js";

const SOURCE = fileURLToPath(new URL("../../native/persistent-thread-pool.c", import.meta.url));

/** The library to preload, or why there is none. */
export type ThreadPoolLibrary = { path: string } | { reason: string };

let built: Promise<ThreadPoolLibrary> | undefined;

/**
 * An engine process's environment for `pool`: this process's, with the
 * library preloaded (before any already there) or not, and never an
 * inherited mark of it.
 */
export function preloadEnv(pool: ThreadPoolLibrary): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== PRELOADED_MARK));
  if ("path" in pool) env.LD_PRELOAD = [pool.path, process.env.LD_PRELOAD].filter(Boolean).join(" ");
  return env;
}

/** What an engine with thread pool `setting` preloads: the library, or why nothing. */
export function threadPoolFor(setting: ThreadPool | undefined): Promise<ThreadPoolLibrary> {
  return setting === "per-decode" ? Promise.resolve({ reason: "--thread-pool per-decode" }) : threadPoolLibrary();
}

/** The preloadable library, built on the first call of a process (and once per machine, cached). */
export function threadPoolLibrary(): Promise<ThreadPoolLibrary> {
  built ??= build().catch((error: unknown) => ({ reason: error instanceof Error ? error.message : String(error) }));
  return built;
}

async function build(): Promise<ThreadPoolLibrary> {
  if (process.platform !== "linux") return { reason: `preloading is done on Linux only (this is ${process.platform})` };
  // The mark is the library's too (a -D below): a new name is a new library.
  const hash = createHash("sha256").update(readFileSync(SOURCE)).update(PRELOADED_MARK).digest("hex").slice(0, 12);
  const dir = commitDir();
  const library = join(dir, `persistent-thread-pool-${hash}.so`);
  if (existsSync(library)) return { path: library };
  const compiler = process.env.CC ?? "cc";
  if (spawnSync(compiler, ["--version"], { stdio: "ignore" }).status !== 0) {
    return { reason: `no C compiler (${compiler}) to build it (on Debian/Ubuntu: apt-get install gcc)` };
  }
  if (spawnSync("git", ["--version"], { stdio: "ignore" }).status !== 0) {
    return { reason: "no git to read llama.cpp's headers from node-llama-cpp's bundle (on Debian/Ubuntu: apt-get install git)" };
  }
  const llama = await llamaSourceDir();
  mkdirSync(dir, { recursive: true });
  // Built aside and renamed: engines starting at once, in one process or several, never load half a file.
  const partial = `${library}.${process.pid}.partial`;
  try {
    await run(
      compiler,
      [
        ...["-O2", "-shared", "-fPIC", `-DPRELOADED_MARK="${PRELOADED_MARK}"`, "-o", partial, SOURCE],
        ...["-I", join(llama, "include"), "-I", join(llama, "ggml", "include"), "-ldl", "-lpthread"],
      ],
      dir,
    );
  } catch (error) {
    rmSync(partial, { force: true });
    const said = (error as Error).message.trim().split("\n").slice(-3).join(" ");
    return { reason: `${compiler} failed: ${said}` };
  }
  renameSync(partial, library);
  return { path: library };
}
