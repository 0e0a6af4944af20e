/**
 * How the GPU run builds llama.cpp: one list, used by the device run and by
 * the suite's check that the kit's source configures for CUDA here.
 */

/** For every build: backends as modules, and no CPU backend of the tools' own (they load the engine's, copied beside them). */
export const LLAMA_BUILD_FLAGS = [
  "-DCMAKE_BUILD_TYPE=Release",
  "-DGGML_NATIVE=OFF",
  "-DBUILD_SHARED_LIBS=ON",
  "-DGGML_BACKEND_DL=ON",
  "-DGGML_CPU=OFF",
  // libggml-base.so, not .so.0: the name node-llama-cpp's binaries load, so the CUDA module drops in.
  "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON",
  "-DLLAMA_CURL=OFF",
  "-DLLAMA_BUILD_TESTS=OFF",
  "-DLLAMA_BUILD_EXAMPLES=OFF",
  "-DLLAMA_BUILD_SERVER=ON",
  "-DLLAMA_BUILD_UI=OFF",
];

/** The peers the bench runs. */
export const LLAMA_TOOLS = ["llama-server", "llama-bench", "llama-batched-bench"];

export interface CudaPieces {
  nvcc: string;
  cublas: string;
  cublasLt: string;
  /** libcuda: the toolkit's link stub, or the driver's own. */
  cudaDriver: string;
  includeDirs: string[];
}

/** The CUDA backend for one architecture (`arch` as "90"), cuBLAS named by path (NVIDIA's wheels put it outside the toolkit). */
export function cudaBuildFlags(cuda: CudaPieces, arch: string): string[] {
  const include = cuda.includeDirs.map((d) => `-I${d}`).join(" ");
  return [
    "-DGGML_CUDA=ON",
    `-DCMAKE_CUDA_COMPILER=${cuda.nvcc}`,
    `-DCMAKE_CUDA_ARCHITECTURES=${arch}-real`,
    `-DCUDA_cublas_LIBRARY=${cuda.cublas}`,
    `-DCUDA_cublasLt_LIBRARY=${cuda.cublasLt}`,
    `-DCUDA_cuda_driver_LIBRARY=${cuda.cudaDriver}`,
    `-DCMAKE_CUDA_FLAGS=${include}`,
    `-DCMAKE_CXX_FLAGS=${include}`,
  ];
}
