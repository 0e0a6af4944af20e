/**
 * What a GGUF file says about itself: quantization (general.file_type),
 * parameter count (from the tensor shapes), size and bits per weight. A file
 * that is not a readable GGUF gets a reason instead, never an exception.
 */
import { open, stat } from "node:fs/promises";
import { GgufFileType, readGgufFileInfo } from "node-llama-cpp";
import { TOKENIZER_ARRAY_KEYS } from "../engine/child/llama-engine.js";

export type GgufSummary =
  | {
      usable: true;
      quantization: string;
      architecture: string;
      parameters: number;
      fileSize: number;
      bitsPerWeight: number;
      contextLength: number | undefined;
    }
  | { usable: false; reason: string; fileSize: number };

/** "MOSTLY_Q4_K_M" → "Q4_K_M", "ALL_F32" → "F32". */
export function quantizationName(fileType: number | undefined): string {
  if (fileType === undefined) return "unknown";
  const name = (GgufFileType as unknown as Record<number, string | undefined>)[fileType];
  return name ? name.replace(/^(MOSTLY|ALL)_/, "") : `file_type ${fileType}`;
}

const cache = new Map<string, { key: string; summary: GgufSummary }>();

const READ_TIMEOUT_MS = 10_000;

/**
 * The fixed start of a GGUF file: magic, version, tensor and metadata counts.
 * node-llama-cpp's reader never returns on a file that has the magic but a
 * garbage version, so this is checked first.
 */
async function checkFixedHeader(path: string, size: number): Promise<void> {
  if (size < 24) throw new Error(`it is ${size} bytes long, shorter than a GGUF header`);
  const handle = await open(path, "r");
  try {
    const { buffer } = await handle.read(Buffer.alloc(24), 0, 24, 0);
    if (buffer.toString("latin1", 0, 4) !== "GGUF") throw new Error("it does not start with the GGUF magic");
    const version = buffer.readUInt32LE(4);
    if (version < 2 || version > 3) throw new Error(`unsupported GGUF version ${version}`);
    const tensors = buffer.readBigUInt64LE(8);
    const keys = buffer.readBigUInt64LE(16);
    if (tensors > BigInt(size) || keys > BigInt(size)) throw new Error("its header counts are impossible for its size");
  } finally {
    await handle.close();
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function inspectGguf(path: string): Promise<GgufSummary> {
  let size: number;
  let key: string;
  try {
    const s = await stat(path);
    size = s.size;
    key = `${s.size}:${s.mtimeMs}`;
  } catch {
    return { usable: false, reason: "the file does not exist", fileSize: 0 };
  }
  const cached = cache.get(path);
  if (cached?.key === key) return cached.summary;
  let summary: GgufSummary;
  try {
    await checkFixedHeader(path, size);
    const info = await withTimeout(
      readGgufFileInfo(path, { logWarnings: false, ignoreKeys: TOKENIZER_ARRAY_KEYS, sourceType: "filesystem" }),
      READ_TIMEOUT_MS,
      "its header could not be read",
    );
    const tensors = info.fullTensorInfo ?? info.tensorInfo ?? [];
    if (tensors.length === 0) throw new Error("it has no tensors");
    const parameters = tensors.reduce((sum, t) => sum + t.dimensions.reduce((a: number, b) => a * Number(b), 1), 0);
    const lastTensor = tensors.reduce((a, b) => (b.fileOffset > a.fileOffset ? b : a));
    if (lastTensor.fileOffset > size)
      throw new Error(`it is truncated (${size} bytes; its tensors reach past ${lastTensor.fileOffset})`);
    const architecture = String(info.metadata.general?.architecture ?? "unknown");
    summary = {
      usable: true,
      quantization: quantizationName(info.metadata.general?.file_type as number | undefined),
      architecture,
      parameters,
      fileSize: size,
      bitsPerWeight: (size * 8) / parameters,
      contextLength: (info.architectureMetadata as { context_length?: number }).context_length,
    };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    summary = { usable: false, reason: `not a valid GGUF file: ${message.split("\n")[0]}`, fileSize: size };
  }
  cache.set(path, { key, summary });
  return summary;
}
