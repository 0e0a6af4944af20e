/**
 * Why node-llama-cpp's prebuilt CUDA backend cannot load on this machine:
 * the shared libraries it links that the dynamic loader does not find, as
 * `ldd` reports them. It links the NVIDIA driver's `libcuda.so.1`, the CUDA 13
 * runtime's `libcudart.so.13` and cuBLAS's `libcublas.so.13`.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The prebuilt CUDA package's backend module, or undefined when that package is not installed. */
function prebuiltCudaBackend(): string | undefined {
  try {
    // Resolved from node-llama-cpp's own folder: npm may nest the package there or hoist it.
    const fromEngine = createRequire(fileURLToPath(import.meta.resolve("node-llama-cpp")));
    const main = fromEngine.resolve("@node-llama-cpp/linux-x64-cuda");
    const backend = join(dirname(main), "..", "bins", "linux-x64-cuda", "libggml-cuda.so");
    return existsSync(backend) ? backend : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What keeps the CUDA backend from loading, in words: the libraries not
 * found, or that the package is missing; undefined when nothing is missing
 * that `ldd` can see (the cause is elsewhere: the GPU, the driver's version).
 */
export function cudaUnavailableReason(): string | undefined {
  const backend = prebuiltCudaBackend();
  if (!backend) return "node-llama-cpp's CUDA package (@node-llama-cpp/linux-x64-cuda) is not installed";
  const ldd = spawnSync("ldd", [backend], { encoding: "utf8", timeout: 10_000 });
  if (ldd.status !== 0) return undefined;
  const missing = [...ldd.stdout.matchAll(/^\s*(\S+) => not found/gm)].map((m) => m[1]);
  if (missing.length === 0) return undefined;
  return `the loader does not find ${missing.join(", ")} (CUDA needs the NVIDIA driver's libcuda.so.1, the CUDA 13 runtime's libcudart.so.13 and cuBLAS's libcublas.so.13)`;
}

/** Whether the NVIDIA kernel driver is loaded: a GPU is there to use. */
export function nvidiaDriverLoaded(): boolean {
  return existsSync("/proc/driver/nvidia/version");
}
