/**
 * What is in service: the loaded variant with its engine process, slots and
 * inference; admission; swaps (load the new one beside the old, switch new
 * calls to it at one instant, then drain or cancel the old one's calls and
 * end its process, so its memory is really given back); crash recovery; and
 * waiting for running calls at shutdown. Finding, checking, downloading and
 * loading a variant is the loader's (`src/variants/`).
 */
import { EventEmitter, once } from "node:events";
import type { Logger } from "pino";
import { ServiceError } from "../errors.js";
import type { CatalogEntry } from "../variants/catalog.js";
import type { DownloadProgress } from "../variants/download.js";
import type { EvaluateOptions } from "../variants/evaluate.js";
import type { Evaluation } from "../variants/evaluation-report.js";
import type { LoadedVariant, LoadOptions, UsableSummary, VariantLoader, VariantView } from "../variants/variant-loader.js";
import { Inference } from "./inference.js";
import { SlotScheduler } from "./slot-scheduler.js";

/** A loaded variant in the pool, with what admits and runs its calls. */
export interface Serving extends LoadedVariant {
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

export type EngineEvent = "crashed" | "hung" | "restarted" | "restart_failed" | "crash_loop";

export interface ServingPoolOptions {
  loader: VariantLoader;
  /** Calls that may wait for a slot, per variant. */
  maxQueue: number;
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

const RESTART_WINDOW_MS = 5 * 60_000;
const RESTART_FIRST_DELAY_MS = 250;
const RESTART_MAX_DELAY_MS = 30_000;
const SHUTTING_DOWN = "the server is shutting down; retry on another instance";

export class ServingPool {
  private serving: Serving | undefined;
  private swappingTo: string | undefined;
  /** Variants switched away from whose calls are draining. */
  private readonly retiring = new Set<Serving>();
  /** Engines the watchdog killed, to tell a hang from a crash. */
  private readonly hung = new WeakSet<Serving["engine"]>();
  /** When engines failed lately (crashes, hangs, failed restarts). */
  private failures: number[] = [];
  private admitting = true;
  private disposed = false;
  /** Emits "settled" whenever a call ends or a swap does: what drains and shutdown wait on. */
  private readonly changes = new EventEmitter();
  /** What happened at startup (and to the engine since), for GetStatus. */
  readonly startupNotes: string[] = [];

  constructor(private readonly options: ServingPoolOptions) {
    // Each drain and the shutdown wait on it: a few at once are normal.
    this.changes.setMaxListeners(0);
  }

  get current(): Serving | undefined {
    return this.serving;
  }

  get swapInProgress(): string | undefined {
    return this.swappingTo;
  }

  /** Calls admitted and not finished, on the variant in service and on those draining. */
  get inFlight(): number {
    let n = this.serving?.inference.inFlight ?? 0;
    for (const old of this.retiring) n += old.inference.inFlight;
    return n;
  }

  /**
   * The inference a new call goes to; `unavailable` while the server is
   * shutting down or no variant is in service.
   */
  admit(): Inference {
    if (!this.admitting) throw new ServiceError("unavailable", SHUTTING_DOWN);
    const serving = this.serving;
    if (!serving) {
      throw new ServiceError(
        "unavailable",
        this.swappingTo
          ? `the server is swapping to "${this.swappingTo}" with downtime; retry shortly`
          : "no model is loaded; retry shortly",
      );
    }
    return serving.inference;
  }

  /**
   * Puts the first of `ids` that loads in service, trying them in order; says
   * in the logs and the startup notes why each one before it failed.
   */
  async start(ids: readonly string[], onDownload?: (id: string, p: DownloadProgress) => void): Promise<Serving> {
    const { log, loader } = this.options;
    const failures: string[] = [];
    for (const [index, id] of ids.entries()) {
      try {
        const entry = (await loader.catalog()).get(id);
        const summary = await loader.ensureUsable(entry, (p) => onDownload?.(id, p));
        const serving = await this.load(entry, summary);
        this.switchTo(serving);
        if (failures.length > 0) this.startupNotes.push(`serving "${id}" after: ${failures.join("; ")}`);
        else this.startupNotes.push(`serving "${id}"`);
        return serving;
      } catch (error) {
        // Stopped while it downloaded: no fallback is tried.
        if (loader.stopped) throw error;
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
  list(): Promise<VariantView[]> {
    const loaded = new Set([this.serving, ...this.retiring].flatMap((s) => (s ? [s.entry.path] : [])));
    return this.options.loader.list(loaded, this.serving?.entry.path);
  }

  /**
   * Swaps to `request.id`; `emit` sees each phase. Any failure before the
   * switch throws a ServiceError and leaves the old variant serving,
   * untouched. `signal` (the call's) stops a swap before the switch the same
   * way, the new engine ended; after the switch the swap goes on to its end,
   * draining the old variant's calls.
   */
  async swap(request: SwapRequest, emit: (event: SwapEvent) => void, signal?: AbortSignal): Promise<void> {
    if (this.swappingTo !== undefined) {
      throw new ServiceError(
        "failed_precondition",
        `a swap to "${this.swappingTo}" is in progress; only one swap runs at a time`,
      );
    }
    if (!this.admitting) throw new ServiceError("unavailable", SHUTTING_DOWN);
    this.swappingTo = request.id;
    const { log, loader } = this.options;
    const stopIfCancelled = () => {
      if (signal?.aborted) {
        throw new ServiceError("cancelled", `the swap to "${request.id}" was cancelled before the switch; nothing changed`);
      }
    };
    try {
      emit({ phase: "checking" });
      const entry = (await loader.catalog()).get(request.id);
      if (this.serving?.entry.path === entry.path) {
        throw new ServiceError("failed_precondition", `variant "${request.id}" is already in service`);
      }
      const summary = await loader.ensureUsable(
        entry,
        ({ bytesDone, bytesTotal }) =>
          emit({ phase: "downloading", bytesDone, bytesTotal, percent: bytesTotal > 0 ? (100 * bytesDone) / bytesTotal : 0 }),
        signal,
      );
      stopIfCancelled();
      const old = this.serving;
      const shortage = old ? await loader.shortage(old, entry) : undefined;
      if (shortage && !request.allowDowntime) {
        throw new ServiceError("failed_precondition", `${shortage}; swap with allow_downtime to unload "${old!.entry.id}" first`);
      }
      const loadNext = async () => {
        const next = await this.load(entry, summary, {
          onProgress: (progress) => emit({ phase: "loading", percent: progress * 100 }),
          onWarming: () => emit({ phase: "warming" }),
          signal,
        });
        if (signal?.aborted) {
          await next.engine.dispose();
          stopIfCancelled();
        }
        return next;
      };
      stopIfCancelled();
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
          this.switchTo(await this.load(old.entry, old.summary));
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
    } catch (error) {
      // A stop that came while the engine started shows as a failed load: it is the cancel.
      stopIfCancelled();
      throw error;
    } finally {
      this.swappingTo = undefined;
      this.changes.emit("settled");
    }
  }

  /**
   * Measures variants one at a time (`ids`, or every downloaded usable one)
   * beside the variant in service; see VariantLoader.evaluate.
   */
  evaluate(
    ids: readonly string[],
    options: EvaluateOptions,
    onResult: (result: Evaluation) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return this.options.loader.evaluate(ids, options, onResult, this.serving, signal);
  }

  /** From now on new calls and swaps get `unavailable`; running ones go on. */
  stopAdmitting(): void {
    this.admitting = false;
  }

  /**
   * Resolves true once no call is running or queued and no swap is under way
   * (a swap is a running call too), or false after `timeoutMs` if some still are.
   */
  async settle(timeoutMs: number): Promise<boolean> {
    const busy = () => this.inFlight > 0 || this.swappingTo !== undefined;
    const signal = AbortSignal.timeout(timeoutMs);
    while (busy()) {
      try {
        await once(this.changes, "settled", { signal });
      } catch {
        return !busy();
      }
    }
    return true;
  }

  /** Ends any download in progress (a swap's, or the startup's); see VariantLoader.stopDownloads. */
  stopDownloads(): void {
    this.options.loader.stopDownloads();
  }

  async dispose(): Promise<void> {
    this.stopDownloads();
    this.admitting = false;
    this.disposed = true;
    const engines = [this.serving, ...this.retiring].flatMap((s) => (s ? [s.engine] : []));
    this.serving = undefined;
    await Promise.all(engines.map((e) => e.dispose()));
  }

  /** Loads `entry` into a Serving of its own, supervised; ended at once if the pool was disposed meanwhile. */
  private async load(entry: CatalogEntry, summary: UsableSummary, options?: LoadOptions): Promise<Serving> {
    const loaded = await this.options.loader.load(entry, summary, options);
    if (this.disposed) {
      // Shut down while it loaded (a swap, a restart): it never serves.
      await loaded.engine.dispose();
      throw new ServiceError("unavailable", "the server is shutting down");
    }
    const { engine } = loaded;
    const scheduler = new SlotScheduler(engine.info.sequences, this.options.maxQueue);
    const inference = new Inference(engine, scheduler, entry.id, () => this.changes.emit("settled"));
    const serving: Serving = { ...loaded, scheduler, inference };
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
        const next = await this.load(dead.entry, dead.summary);
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

  /**
   * Drains or cancels the old variant's calls, then ends its engine process.
   * Each call that ends is reported (`draining`, with the calls left).
   */
  private async retire(old: Serving, request: SwapRequest, nextId: string, emit: (event: SwapEvent) => void): Promise<void> {
    this.retiring.add(old);
    try {
      if (request.policy === "cancel") {
        old.inference.cancelAll(`cancelled by the server: variant swap to "${nextId}" (policy CANCEL)`);
      }
      let left = old.inference.inFlight;
      emit({ phase: "draining", inFlight: left });
      const timeout = AbortSignal.timeout(request.drainTimeoutMs);
      let cancelled = request.policy === "cancel";
      while (old.inference.inFlight > 0) {
        try {
          await once(this.changes, "settled", cancelled ? {} : { signal: timeout });
        } catch {
          cancelled = true;
          old.inference.cancelAll(
            `cancelled by the server: variant swap to "${nextId}" (drain timeout of ${request.drainTimeoutMs} ms)`,
          );
        }
        // Calls ending on the new variant wake this too: only the old one's count is news.
        if (old.inference.inFlight !== left) {
          left = old.inference.inFlight;
          emit({ phase: "draining", inFlight: left });
        }
      }
      await old.engine.dispose();
      emit({ phase: "released", message: `"${old.entry.id}" unloaded` });
    } finally {
      this.retiring.delete(old);
    }
  }
}
