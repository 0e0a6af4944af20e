/**
 * Downloads a variant's file with node-llama-cpp's downloader (resumable, with
 * progress) into a hidden staging folder, checks its sha256 when the catalog
 * knows it, and only then moves it into the models folder: a half or wrong
 * file is never taken for a model.
 */
import { createHash } from "node:crypto";
import { lookup } from "node:dns/promises";
import { createReadStream } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { createModelDownloader } from "node-llama-cpp";
import { ServiceError } from "../errors.js";
import type { CatalogEntry } from "./catalog.js";

export interface DownloadProgress {
  bytesDone: number;
  bytesTotal: number;
}

/** A download that makes no progress for this long is given up. */
const STALL_MS = 60_000;

/** The host a source downloads from (hf: URIs go to Hugging Face, or HF_ENDPOINT). */
function sourceHost(source: string): string {
  if (source.startsWith("hf:")) return new URL(process.env.HF_ENDPOINT ?? "https://huggingface.co").hostname;
  return new URL(source).hostname;
}

/**
 * Fails fast, with a reason a person can act on, when the download's host
 * cannot even be resolved (offline): the downloader itself would retry for
 * minutes.
 */
async function assertReachable(entry: CatalogEntry): Promise<void> {
  const host = sourceHost(entry.source);
  try {
    await lookup(host);
  } catch (error) {
    throw new ServiceError(
      "unavailable",
      `variant "${entry.id}" is not downloaded (${entry.path}) and ${host} cannot be reached to download it ` +
        `(${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
    );
  }
}

export function isRemote(entry: CatalogEntry): boolean {
  return /^(hf:|https?:\/\/)/.test(entry.source);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Fetches `entry` to `entry.path`. Resumes a download that was cut off. */
export async function downloadVariant(
  entry: CatalogEntry,
  onProgress: (progress: DownloadProgress) => void,
  signal?: AbortSignal,
): Promise<void> {
  if (!isRemote(entry))
    throw new ServiceError("failed_precondition", `variant "${entry.id}" is a local file that is missing: ${entry.path}`);
  const staging = join(dirname(entry.path), ".partial");
  const fileName = basename(entry.path);
  try {
    await mkdir(staging, { recursive: true });
  } catch (error) {
    throw new ServiceError(
      "failed_precondition",
      `cannot write to the models folder ${dirname(entry.path)}: ${(error as Error).message}`,
    );
  }
  await assertReachable(entry);
  const stall = new AbortController();
  let stallTimer = setTimeout(() => stall.abort(), STALL_MS);
  const combined = signal ? AbortSignal.any([signal, stall.signal]) : stall.signal;
  let staged: string;
  try {
    const downloader = await createModelDownloader({
      modelUri: entry.source,
      dirPath: staging,
      fileName,
      skipExisting: false,
      deleteTempFileOnCancel: false,
      showCliProgress: false,
      onProgress: ({ totalSize, downloadedSize }) => {
        clearTimeout(stallTimer);
        stallTimer = setTimeout(() => stall.abort(), STALL_MS);
        onProgress({ bytesDone: downloadedSize, bytesTotal: totalSize });
      },
    });
    staged = await downloader.download({ signal: combined });
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    const why = stall.signal.aborted ? `no progress for ${STALL_MS / 1000} s` : (error as Error).message;
    throw new ServiceError("unavailable", `downloading variant "${entry.id}" from ${entry.source} failed: ${why}`);
  } finally {
    clearTimeout(stallTimer);
  }
  if (entry.sha256) {
    const actual = await sha256File(staged);
    if (actual !== entry.sha256) {
      await rm(staged, { force: true });
      throw new ServiceError(
        "failed_precondition",
        `variant "${entry.id}": checksum mismatch (expected sha256 ${entry.sha256}, got ${actual}); the file was discarded`,
      );
    }
  }
  await rename(staged, entry.path);
}
