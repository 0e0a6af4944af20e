/**
 * Downloads a variant's file with node-llama-cpp's downloader (resumable, with
 * progress) into a hidden staging folder, checks its sha256 when the catalog
 * knows it, and only then moves it into the models folder: a half or wrong
 * file is never taken for a model. A download cut by the network leaves its
 * partial file to be resumed; one stopped on purpose (SIGTERM, shutdown) or
 * one that cannot be written removes it.
 */
import { createHash } from "node:crypto";
import { lookup } from "node:dns/promises";
import { createReadStream } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
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

/** Errors that say the disk refused a write, not that the download failed. */
const WRITE_ERRORS = new Set(["EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENOTDIR", "EISDIR"]);

function isWriteError(error: unknown): boolean {
  return WRITE_ERRORS.has((error as NodeJS.ErrnoException | undefined)?.code ?? "");
}

function cannotWrite(folder: string, error: unknown): ServiceError {
  return new ServiceError("failed_precondition", `cannot write to the models folder ${folder}: ${(error as Error).message}`);
}

/**
 * Fails at once when a file cannot be created in `dir`: the downloader would
 * retry opening its file for minutes, and the final move needs the models
 * folder writable too. Permission bits alone do not tell (root, read-only
 * mounts, immutable folders), so it tries.
 */
async function assertWritable(dir: string, folder: string): Promise<void> {
  const probe = join(dir, `.write-check-${process.pid}`);
  try {
    await writeFile(probe, "", { flag: "wx" });
    await rm(probe, { force: true });
  } catch (error) {
    throw cannotWrite(folder, error);
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

/**
 * Fetches `entry` to `entry.path`. Resumes a download that was cut off. When
 * `signal` aborts, the download stops, its partial file is removed, and the
 * signal's reason is thrown.
 */
export async function downloadVariant(
  entry: CatalogEntry,
  onProgress: (progress: DownloadProgress) => void,
  signal?: AbortSignal,
): Promise<void> {
  if (!isRemote(entry))
    throw new ServiceError("failed_precondition", `variant "${entry.id}" is a local file that is missing: ${entry.path}`);
  signal?.throwIfAborted();
  const folder = dirname(entry.path);
  const staging = join(folder, ".partial");
  const fileName = basename(entry.path);
  try {
    await mkdir(staging, { recursive: true });
  } catch (error) {
    throw cannotWrite(folder, error);
  }
  await assertWritable(staging, folder);
  await assertWritable(folder, folder);
  await assertReachable(entry);
  const stall = new AbortController();
  let stallTimer = setTimeout(() => stall.abort(), STALL_MS);
  const combined = signal ? AbortSignal.any([signal, stall.signal]) : stall.signal;
  let downloader: Awaited<ReturnType<typeof createModelDownloader>> | undefined;
  let staged: string;
  try {
    downloader = await createModelDownloader({
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
    // A cancelled download resolves as if it had finished: the signal says which it was.
    combined.throwIfAborted();
  } catch (error) {
    if (signal?.aborted || isWriteError(error)) {
      // Stopped on purpose, or the disk refused it: nothing is kept to resume.
      await downloader?.cancel({ deleteTempFile: true }).catch(() => {});
      await rm(join(staging, fileName), { force: true }).catch(() => {});
      if (signal?.aborted) throw signal.reason;
      throw cannotWrite(folder, error);
    }
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
  try {
    await rename(staged, entry.path);
  } catch (error) {
    // The models folder stopped taking files while the download ran.
    await rm(staged, { force: true }).catch(() => {});
    throw cannotWrite(folder, error);
  }
}
