/**
 * Finding, checking, downloading and loading variants: everything about a
 * variant short of serving it. The serving pool (`src/scheduling/`) decides
 * what is in service and calls on this; nothing here knows of slots, queues
 * or calls.
 */
import { existsSync } from "node:fs";
import os from "node:os";
import type { Logger } from "pino";
import { EngineProcess } from "../engine/engine-process.js";
import type { EngineOptions, MemoryEstimate } from "../engine/protocol.js";
import { ServiceError } from "../errors.js";
import { Catalog, type CatalogEntry, type CatalogOptions } from "./catalog.js";
import { type DownloadProgress, downloadVariant, isRemote } from "./download.js";
import { type EvaluateOptions, evaluateVariant } from "./evaluate.js";
import type { Evaluation } from "./evaluation-report.js";
import { type GgufSummary, inspectGguf } from "./gguf-inspect.js";

export type UsableSummary = Extract<GgufSummary, { usable: true }>;

export type EngineSettings = Omit<EngineOptions, "modelPath">;

/** A variant with its engine process started and warmed: ready to serve. */
export interface LoadedVariant {
  readonly entry: CatalogEntry;
  /** What this variant needs, model and context, by node-llama-cpp's estimate. */
  readonly needs: MemoryEstimate;
  readonly summary: UsableSummary;
  readonly engine: EngineProcess;
}

export interface VariantView {
  entry: CatalogEntry;
  summary: GgufSummary | undefined;
  downloaded: boolean;
  active: boolean;
  loaded: boolean;
}

export interface VariantLoaderOptions {
  catalog: CatalogOptions;
  engine: EngineSettings;
  /** Bytes the variants may use together (RAM on CPU, VRAM on GPU); default: what the device has free. */
  memoryBudget?: number;
  log: Logger;
}

/** Whether a variant fits in memory beside those loaded, with the numbers (bytes). */
export interface MemoryFit {
  kind: "RAM" | "VRAM";
  /** What the new variant needs. */
  need: number;
  /** What the loaded ones need together. */
  used: number;
  budget: number | undefined;
  /** What is left for the new one: the budget less `used`, or what the device has free. */
  free: number;
  fits: boolean;
  /** Whether it would fit with nothing else loaded. */
  fitsAlone: boolean;
  /** The loaded ones, named for a message. */
  beside: string;
}

export interface LoadOptions {
  /** Load progress, 0…1. */
  onProgress?(progress: number): void;
  /** Told when the model is loaded and its first generation starts. */
  onWarming?(): void;
  /** Stops the load: the engine process being started is killed. */
  signal?: AbortSignal;
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

export class VariantLoader {
  /** Aborted when the server stops: downloads in progress end and remove their partial files. */
  private readonly stopping = new AbortController();

  constructor(private readonly options: VariantLoaderOptions) {}

  catalog(): Promise<Catalog> {
    return Catalog.load(this.options.catalog);
  }

  /** Whether the server is stopping (`stopDownloads` was called). */
  get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  /**
   * Every catalog entry with what its file says; `loaded` are the files of
   * the engines running now, `active` those the routing policy sends calls to.
   */
  async list(loaded: ReadonlySet<string>, active: ReadonlySet<string>): Promise<VariantView[]> {
    const catalog = await this.catalog();
    return Promise.all(
      catalog.list().map(async (entry) => {
        const downloaded = existsSync(entry.path);
        return {
          entry,
          summary: downloaded ? await inspectGguf(entry.path) : undefined,
          downloaded,
          active: active.has(entry.path),
          loaded: loaded.has(entry.path),
        };
      }),
    );
  }

  /**
   * The facts of `entry`'s file, downloading it first when it is missing and
   * remote; `failed_precondition` when it is missing and local, or unusable.
   * `signal` (beside the server's stop) ends a download in progress.
   */
  async ensureUsable(
    entry: CatalogEntry,
    onDownload: (progress: DownloadProgress) => void,
    signal?: AbortSignal,
  ): Promise<UsableSummary> {
    if (!existsSync(entry.path)) {
      if (!isRemote(entry))
        throw new ServiceError("failed_precondition", `variant "${entry.id}": its file is missing: ${entry.path}`);
      this.options.log.info({ variant: entry.id, source: entry.source, path: entry.path }, "downloading variant");
      onDownload({ bytesDone: 0, bytesTotal: 0 });
      const stop = signal ? AbortSignal.any([this.stopping.signal, signal]) : this.stopping.signal;
      await downloadVariant(entry, onDownload, stop);
    }
    const summary = await inspectGguf(entry.path);
    if (!summary.usable) throw new ServiceError("failed_precondition", `variant "${entry.id}" cannot be used: ${summary.reason}`);
    return summary;
  }

  /** Starts and warms an engine for `entry`; the engine is ended again if warming fails. */
  async load(entry: CatalogEntry, summary: UsableSummary, options: LoadOptions = {}): Promise<LoadedVariant> {
    let engine: EngineProcess;
    try {
      engine = await EngineProcess.start(
        { ...this.options.engine, modelPath: entry.path },
        this.options.log,
        options.onProgress,
        options.signal,
      );
    } catch (error) {
      throw new ServiceError("failed_precondition", `variant "${entry.id}" failed to load: ${(error as Error).message}`);
    }
    options.onWarming?.();
    try {
      await engine.warm();
    } catch (error) {
      await engine.dispose();
      throw new ServiceError(
        "failed_precondition",
        `variant "${entry.id}" failed its first generation: ${(error as Error).message}`,
      );
    }
    let needs: MemoryEstimate;
    try {
      needs = await engine.estimate(entry.path);
    } catch {
      needs = { ramBytes: summary.fileSize, vramBytes: 0 };
    }
    return { entry, needs, summary, engine };
  }

  /**
   * Whether `entry` fits beside the variants loaded now (`beside`, at least
   * one: its engine estimates what `entry` needs): node-llama-cpp's estimate
   * against the memory budget, or, without one, what the device has free.
   */
  async fit(beside: readonly LoadedVariant[], entry: CatalogEntry): Promise<MemoryFit> {
    const probe = beside[0]!.engine;
    const gpu = probe.info.backend !== "cpu";
    let needs: MemoryEstimate;
    try {
      needs = await probe.estimate(entry.path);
    } catch (error) {
      throw new ServiceError(
        "failed_precondition",
        `variant "${entry.id}": its memory needs cannot be estimated: ${(error as Error).message}`,
      );
    }
    const need = gpu ? needs.vramBytes : needs.ramBytes;
    const used = beside.reduce((sum, v) => sum + (gpu ? v.needs.vramBytes : v.needs.ramBytes), 0);
    const budget = this.options.memoryBudget;
    const free = budget !== undefined ? Math.max(0, budget - used) : gpu ? (await probe.memory()).vramFree : os.freemem();
    return {
      kind: gpu ? "VRAM" : "RAM",
      need,
      used,
      budget,
      free,
      fits: need <= free,
      fitsAlone: need <= (budget ?? free + used),
      beside: beside.map((v) => `"${v.entry.id}"`).join(" and "),
    };
  }

  /**
   * Why `entry` cannot be loaded beside `current` for a swap, or undefined
   * when it can. Throws `failed_precondition` when it could not fit even
   * alone.
   */
  async shortage(current: readonly LoadedVariant[], entry: CatalogEntry): Promise<string | undefined> {
    const fit = await this.fit(current, entry);
    const { kind, need, used, budget, free, beside } = fit;
    if (!fit.fitsAlone) {
      throw new ServiceError(
        "failed_precondition",
        budget !== undefined
          ? `variant "${entry.id}" needs about ${mib(need)} of ${kind}, more than the whole memory budget of ${mib(budget)}`
          : `variant "${entry.id}" needs about ${mib(need)} of ${kind}, more than is free even without ${beside} (${mib(free + used)})`,
      );
    }
    if (fit.fits) return undefined;
    return budget !== undefined
      ? `variant "${entry.id}" needs about ${mib(need)} of ${kind} beside ${beside}'s ${mib(used)}: ` +
          `${mib(used + need)} together, over the memory budget of ${mib(budget)}`
      : `variant "${entry.id}" needs about ${mib(need)} of ${kind}, and only ${mib(free)} is free beside ${beside}`;
  }

  /**
   * Refuses, with `resource_exhausted` and the numbers (needed, free,
   * budget), a variant that does not fit beside those loaded.
   */
  async checkFits(beside: readonly LoadedVariant[], entry: CatalogEntry): Promise<void> {
    const { kind, need, used, budget, free, fits, beside: names } = await this.fit(beside, entry);
    if (fits) return;
    throw new ServiceError(
      "resource_exhausted",
      `variant "${entry.id}" needs about ${mib(need)} of ${kind}; ${mib(free)} is free ` +
        (budget !== undefined ? `of the memory budget of ${mib(budget)} ` : "on the device ") +
        `beside ${names} (${mib(used)}); unload a variant first`,
    );
  }

  /**
   * Measures variants one at a time (`ids`, or every downloaded usable one),
   * each in an engine process of its own beside `beside` (the variants
   * loaded); one that would not fit in memory beside them is reported, not
   * loaded. `signal` (the call's) stops it: the variant being measured loses
   * its engine at once.
   */
  async evaluate(
    ids: readonly string[],
    options: EvaluateOptions,
    onResult: (result: Evaluation) => void,
    beside: readonly LoadedVariant[],
    signal?: AbortSignal,
  ): Promise<void> {
    for (const entry of await (await this.catalog()).select(ids)) {
      const shortage = beside.length > 0 ? () => this.shortage(beside, entry).catch((error: Error) => error.message) : undefined;
      onResult(await evaluateVariant(entry, this.options.engine, options, this.options.log, shortage, signal));
    }
  }

  /**
   * Ends any download in progress (a swap's, or the startup's) with
   * `UNAVAILABLE`, its partial file removed: a download may take far longer
   * than a grace period, and a half file is of no use to anyone.
   */
  stopDownloads(): void {
    if (!this.stopping.signal.aborted) {
      this.stopping.abort(
        new ServiceError("unavailable", "the server is shutting down; the download was stopped and its partial file removed"),
      );
    }
  }
}
