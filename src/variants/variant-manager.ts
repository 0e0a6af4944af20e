/**
 * The variant in service and the way to change it. A swap loads the new
 * variant in an engine process of its own beside the old one, warms it,
 * switches new calls to it at one instant, then drains (or cancels) the old
 * one's calls and ends its process, so its memory is really given back. Any
 * failure before the switch leaves the old variant serving, untouched.
 */
import { existsSync } from "node:fs";
import os from "node:os";
import type { Logger } from "pino";
import { EngineProcess } from "../engine/engine-process.js";
import type { EngineOptions, MemoryEstimate } from "../engine/protocol.js";
import { ServiceError } from "../errors.js";
import { Inference } from "../scheduling/inference.js";
import { SlotScheduler } from "../scheduling/slot-scheduler.js";
import { Catalog, type CatalogEntry, type CatalogOptions } from "./catalog.js";
import { type DownloadProgress, downloadVariant, isRemote } from "./download.js";
import { type EvaluateOptions, evaluateVariant } from "./evaluate.js";
import type { Evaluation } from "./evaluation-report.js";
import { type GgufSummary, inspectGguf } from "./gguf-inspect.js";

type UsableSummary = Extract<GgufSummary, { usable: true }>;

export type EngineSettings = Omit<EngineOptions, "modelPath"> & { maxQueue: number };

export interface Serving {
  readonly entry: CatalogEntry;
  /** What this variant needs, model and context, by node-llama-cpp's estimate. */
  readonly needs: MemoryEstimate;
  readonly summary: UsableSummary;
  readonly engine: EngineProcess;
  readonly scheduler: SlotScheduler;
  readonly inference: Inference;
}

export type SwapPhaseName = "checking" | "downloading" | "loading" | "warming" | "switched" | "draining" | "released" | "done";

export interface SwapEvent {
  phase: SwapPhaseName;
  bytesDone?: number;
  bytesTotal?: number;
  percent?: number;
  inFlight?: number;
  message?: string;
}

export interface SwapRequest {
  id: string;
  policy: "drain" | "cancel";
  drainTimeoutMs: number;
  /** Unload the old variant first when both do not fit. */
  allowDowntime?: boolean;
}

export interface VariantView {
  entry: CatalogEntry;
  summary: GgufSummary | undefined;
  downloaded: boolean;
  active: boolean;
  loaded: boolean;
}

export interface VariantManagerOptions {
  catalog: CatalogOptions;
  engine: EngineSettings;
  /** Bytes the variants may use together (RAM on CPU, VRAM on GPU); default: what the device has free. */
  memoryBudget?: number;
  log: Logger;
  /** Called when the variant in service changes, or its engine dies (with undefined). */
  onServingChange?(serving: Serving | undefined): void;
  /** A live engine that answers no ping for this long is killed (and restarted). */
  engineWatchdogMs: number;
  /** More engine failures than this within RESTART_WINDOW_MS is a crash loop: no more restarts. */
  maxRestarts: number;
  /** Told of each engine failure and restart, for the metrics. */
  onEngineEvent?(variant: string, event: EngineEvent): void;
}

export type EngineEvent = "crashed" | "hung" | "restarted" | "restart_failed" | "crash_loop";

const DRAIN_POLL_MS = 100;
const RESTART_WINDOW_MS = 5 * 60_000;
const RESTART_FIRST_DELAY_MS = 250;
const RESTART_MAX_DELAY_MS = 30_000;

export class VariantManager {
  private serving: Serving | undefined;
  private swappingTo: string | undefined;
  private readonly retiring = new Set<EngineProcess>();
  /** Engines the watchdog killed, to tell a hang from a crash. */
  private readonly hung = new WeakSet<EngineProcess>();
  /** When engines failed lately (crashes, hangs, failed restarts). */
  private failures: number[] = [];
  private disposed = false;
  /** Aborted when the server stops: downloads in progress end and remove their partial files. */
  private readonly stopping = new AbortController();
  /** What happened at startup (and to the engine since), for GetStatus. */
  readonly startupNotes: string[] = [];

  constructor(private readonly options: VariantManagerOptions) {}

  get current(): Serving | undefined {
    return this.serving;
  }

  get swapInProgress(): string | undefined {
    return this.swappingTo;
  }

  catalog(): Promise<Catalog> {
    return Catalog.load(this.options.catalog);
  }

  /**
   * Puts the first of `ids` that loads in service, trying them in order; says
   * in the logs and the startup notes why each one before it failed.
   */
  async start(
    ids: readonly string[],
    onDownload?: (id: string, p: { bytesDone: number; bytesTotal: number }) => void,
  ): Promise<Serving> {
    const { log } = this.options;
    const failures: string[] = [];
    for (const [index, id] of ids.entries()) {
      try {
        const entry = (await this.catalog()).get(id);
        const summary = await this.ensureUsable(entry, (p) => onDownload?.(id, p));
        const serving = await this.load(entry, summary, () => {});
        this.switchTo(serving);
        if (failures.length > 0) this.startupNotes.push(`serving "${id}" after: ${failures.join("; ")}`);
        else this.startupNotes.push(`serving "${id}"`);
        return serving;
      } catch (error) {
        // Stopped while it downloaded: no fallback is tried.
        if (this.stopping.signal.aborted) throw error;
        const reason = `"${id}" could not be used: ${error instanceof Error ? error.message : String(error)}`;
        failures.push(reason);
        log.warn(
          { variant: id, reason },
          index < ids.length - 1 ? "variant failed; trying the next in the fallback order" : "variant failed; no fallback left",
        );
      }
    }
    throw new Error(failures.join("; "));
  }

  /** Every catalog entry with what its file says, and whether it is loaded or in service. */
  async list(): Promise<VariantView[]> {
    const catalog = await this.catalog();
    const loaded = new Set([this.serving?.entry.path, ...[...this.retiring].map((e) => e.info.modelPath)]);
    return Promise.all(
      catalog.list().map(async (entry) => {
        const downloaded = existsSync(entry.path);
        return {
          entry,
          summary: downloaded ? await inspectGguf(entry.path) : undefined,
          downloaded,
          active: this.serving?.entry.path === entry.path,
          loaded: loaded.has(entry.path),
        };
      }),
    );
  }

  /** Swaps to `request.id`; `emit` sees each phase. Throws a ServiceError before the switch on any failure. */
  async swap(request: SwapRequest, emit: (event: SwapEvent) => void): Promise<void> {
    if (this.swappingTo !== undefined) {
      throw new ServiceError(
        "failed_precondition",
        `a swap to "${this.swappingTo}" is in progress; only one swap runs at a time`,
      );
    }
    this.swappingTo = request.id;
    const { log } = this.options;
    try {
      emit({ phase: "checking" });
      const entry = (await this.catalog()).get(request.id);
      if (this.serving?.entry.path === entry.path) {
        throw new ServiceError("failed_precondition", `variant "${request.id}" is already in service`);
      }
      const summary = await this.ensureUsable(entry, ({ bytesDone, bytesTotal }) =>
        emit({ phase: "downloading", bytesDone, bytesTotal, percent: bytesTotal > 0 ? (100 * bytesDone) / bytesTotal : 0 }),
      );
      const old = this.serving;
      const shortage = old ? await this.memoryShortage(old, entry) : undefined;
      if (shortage && !request.allowDowntime) {
        throw new ServiceError("failed_precondition", `${shortage}; swap with allow_downtime to unload "${old!.entry.id}" first`);
      }
      const loadNext = () =>
        this.load(
          entry,
          summary,
          (progress) => emit({ phase: "loading", percent: progress * 100 }),
          () => emit({ phase: "warming" }),
        );
      if (old && shortage) {
        // Downtime: the old variant goes first, then the new one loads.
        log.warn({ from: old.entry.id, to: entry.id, shortage }, "swapping with downtime: unloading the old variant first");
        this.serving = undefined;
        this.options.onServingChange?.(undefined);
        await this.retire(old, request, entry.id, emit);
        let next: Serving;
        try {
          next = await loadNext();
        } catch (error) {
          log.error(
            { variant: entry.id, err: error },
            "the new variant failed to load during a downtime swap; reloading the old one",
          );
          this.switchTo(await this.load(old.entry, old.summary, () => {}));
          throw error;
        }
        this.switchTo(next);
        emit({ phase: "switched", message: `new calls go to "${next.entry.id}"` });
      } else {
        const next = await loadNext();
        this.switchTo(next);
        log.info({ from: old?.entry.id, to: next.entry.id }, "switched variant");
        emit({ phase: "switched", message: `new calls go to "${next.entry.id}"` });
        if (old) await this.retire(old, request, next.entry.id, emit);
      }
      emit({ phase: "done" });
    } finally {
      this.swappingTo = undefined;
    }
  }

  /**
   * Why `entry` cannot be loaded beside the variant in service, or undefined
   * when it can: node-llama-cpp's estimate of what it needs, against the
   * memory budget (or, without one, what the device has free now).
   */
  private async memoryShortage(current: Serving, entry: CatalogEntry): Promise<string | undefined> {
    const gpu = current.engine.info.backend !== "cpu";
    const kind = gpu ? "VRAM" : "RAM";
    let needs: MemoryEstimate;
    try {
      needs = await current.engine.estimate(entry.path);
    } catch (error) {
      throw new ServiceError(
        "failed_precondition",
        `variant "${entry.id}": its memory needs cannot be estimated: ${(error as Error).message}`,
      );
    }
    const need = gpu ? needs.vramBytes : needs.ramBytes;
    const used = gpu ? current.needs.vramBytes : current.needs.ramBytes;
    const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    const budget = this.options.memoryBudget;
    if (budget !== undefined) {
      if (need > budget) {
        throw new ServiceError(
          "failed_precondition",
          `variant "${entry.id}" needs about ${mb(need)} of ${kind}, more than the whole memory budget of ${mb(budget)}`,
        );
      }
      if (used + need <= budget) return undefined;
      return (
        `variant "${entry.id}" needs about ${mb(need)} of ${kind} beside "${current.entry.id}"'s ${mb(used)}: ` +
        `${mb(used + need)} together, over the memory budget of ${mb(budget)}`
      );
    }
    const free = gpu ? (await current.engine.memory()).vramFree : os.freemem();
    if (need <= free) return undefined;
    if (need > free + used) {
      throw new ServiceError(
        "failed_precondition",
        `variant "${entry.id}" needs about ${mb(need)} of ${kind}, more than is free even without "${current.entry.id}" (${mb(free + used)})`,
      );
    }
    return `variant "${entry.id}" needs about ${mb(need)} of ${kind}, and only ${mb(free)} is free beside "${current.entry.id}"`;
  }

  /**
   * The facts of `entry`'s file, downloading it first when it is missing and
   * remote; `failed_precondition` when it is missing and local, or unusable.
   */
  private async ensureUsable(entry: CatalogEntry, onDownload: (progress: DownloadProgress) => void): Promise<UsableSummary> {
    if (!existsSync(entry.path)) {
      if (!isRemote(entry))
        throw new ServiceError("failed_precondition", `variant "${entry.id}": its file is missing: ${entry.path}`);
      this.options.log.info({ variant: entry.id, source: entry.source, path: entry.path }, "downloading variant");
      onDownload({ bytesDone: 0, bytesTotal: 0 });
      await downloadVariant(entry, onDownload, this.stopping.signal);
    }
    const summary = await inspectGguf(entry.path);
    if (!summary.usable) throw new ServiceError("failed_precondition", `variant "${entry.id}" cannot be used: ${summary.reason}`);
    return summary;
  }

  /** Starts and warms an engine for `entry`; the engine is ended again if warming fails. */
  private async load(
    entry: CatalogEntry,
    summary: UsableSummary,
    onProgress: (progress: number) => void,
    onWarming?: () => void,
  ): Promise<Serving> {
    const { maxQueue, ...engineOptions } = this.options.engine;
    let engine: EngineProcess;
    try {
      engine = await EngineProcess.start({ ...engineOptions, modelPath: entry.path }, this.options.log, onProgress);
    } catch (error) {
      throw new ServiceError("failed_precondition", `variant "${entry.id}" failed to load: ${(error as Error).message}`);
    }
    if (this.disposed) {
      // Shut down while it loaded (a swap, a restart): it never serves.
      await engine.dispose();
      throw new ServiceError("unavailable", "the server is shutting down");
    }
    onWarming?.();
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
    if (this.disposed) {
      await engine.dispose();
      throw new ServiceError("unavailable", "the server is shutting down");
    }
    const scheduler = new SlotScheduler(engine.info.sequences, maxQueue);
    const serving: Serving = { entry, needs, summary, engine, scheduler, inference: new Inference(engine, scheduler, entry.id) };
    engine.watch(this.options.engineWatchdogMs, (silentMs) => {
      this.hung.add(engine);
      this.options.log.error({ variant: entry.id, pid: engine.pid, silentMs }, "engine process not answering; killing it");
    });
    engine.onExit((code, signal) => {
      if (this.serving !== serving || this.disposed) return;
      const hung = this.hung.has(engine);
      this.options.log.error({ variant: entry.id, code, signal, hung }, "engine process of the variant in service exited");
      this.options.onServingChange?.(undefined);
      void this.recover(serving, hung ? "hung" : "crashed");
    });
    return serving;
  }

  /**
   * Restarts the dead engine of the variant in service on the same variant,
   * after a delay that doubles with each failure (0.25 s … 30 s). More than
   * `maxRestarts` failures within five minutes is a crash loop: it stops
   * trying, says so in the logs and GetStatus, and health stays NOT_SERVING
   * (a swap to another variant still works).
   */
  private async recover(dead: Serving, reason: "crashed" | "hung"): Promise<void> {
    const { log, onEngineEvent } = this.options;
    const id = dead.entry.id;
    onEngineEvent?.(id, reason);
    for (;;) {
      const now = Date.now();
      this.failures = [...this.failures.filter((t) => now - t < RESTART_WINDOW_MS), now];
      if (this.failures.length > this.options.maxRestarts) {
        const note = `engine of "${id}" failed ${this.failures.length} times in ${RESTART_WINDOW_MS / 60_000} minutes; not restarted (crash loop)`;
        log.error({ variant: id, failures: this.failures.length }, note);
        this.startupNotes.push(note);
        onEngineEvent?.(id, "crash_loop");
        return;
      }
      const delay = Math.min(RESTART_MAX_DELAY_MS, RESTART_FIRST_DELAY_MS * 2 ** (this.failures.length - 1));
      await new Promise((r) => setTimeout(r, delay));
      // A swap or a shutdown in the meantime decides instead.
      if (this.serving !== dead || this.disposed) return;
      try {
        const next = await this.load(dead.entry, dead.summary, () => {});
        if (this.serving !== dead || this.disposed) {
          await next.engine.dispose();
          return;
        }
        this.switchTo(next);
        log.info({ variant: id, pid: next.engine.pid }, "engine restarted");
        onEngineEvent?.(id, "restarted");
        return;
      } catch (error) {
        log.error({ variant: id, err: error }, "engine restart failed");
        onEngineEvent?.(id, "restart_failed");
      }
    }
  }

  private switchTo(serving: Serving): void {
    this.serving = serving;
    this.options.onServingChange?.(serving);
  }

  /** Drains or cancels the old variant's calls, then ends its engine process. */
  private async retire(old: Serving, request: SwapRequest, nextId: string, emit: (event: SwapEvent) => void): Promise<void> {
    this.retiring.add(old.engine);
    try {
      if (request.policy === "cancel") {
        old.inference.cancelAll(`cancelled by the server: variant swap to "${nextId}" (policy CANCEL)`);
      }
      const deadline = Date.now() + request.drainTimeoutMs;
      let cancelled = request.policy === "cancel";
      emit({ phase: "draining", inFlight: old.inference.inFlight });
      while (old.inference.inFlight > 0) {
        if (!cancelled && Date.now() >= deadline) {
          cancelled = true;
          old.inference.cancelAll(
            `cancelled by the server: variant swap to "${nextId}" (drain timeout of ${request.drainTimeoutMs} ms)`,
          );
        }
        await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
        emit({ phase: "draining", inFlight: old.inference.inFlight });
      }
      await old.engine.dispose();
      emit({ phase: "released", message: `"${old.entry.id}" unloaded` });
    } finally {
      this.retiring.delete(old.engine);
    }
  }

  /**
   * Measures variants one at a time (`ids`, or every downloaded usable one),
   * each in an engine process of its own beside the variant in service; one
   * that would not fit in memory beside it is reported, not loaded. `signal`
   * (the call's) stops it: the variant being measured loses its engine at once.
   */
  async evaluate(
    ids: readonly string[],
    options: EvaluateOptions,
    onResult: (result: Evaluation) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    for (const entry of await (await this.catalog()).select(ids)) {
      const serving = this.serving;
      const shortage = serving ? () => this.memoryShortage(serving, entry).catch((error: Error) => error.message) : undefined;
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

  async dispose(): Promise<void> {
    this.stopDownloads();
    this.disposed = true;
    const engines = [this.serving?.engine, ...this.retiring].filter((e): e is EngineProcess => e !== undefined);
    this.serving = undefined;
    await Promise.all(engines.map((e) => e.dispose()));
  }
}
