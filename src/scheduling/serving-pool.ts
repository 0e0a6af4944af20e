/**
 * What is in service: the loaded variants, each with its engine process,
 * slots, queue and inference; the routing policy that splits the calls that
 * name no variant; admission; loads, unloads and swaps (a swap loads the new
 * one beside the old, routes every call to it at one instant, then drains or
 * cancels the old one's calls and ends its process, so its memory is really
 * given back); crash recovery, per variant; and waiting for running calls at
 * shutdown. Finding, checking, downloading and loading a variant is the
 * loader's (`src/variants/`).
 */
import { createHash } from "node:crypto";
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

/** A loaded variant's engine with what admits and runs its calls. */
export interface Serving extends LoadedVariant {
  readonly scheduler: SlotScheduler;
  readonly inference: Inference;
}

/** A loaded variant as the pool keeps it: its engine may be restarting, its weight and calls outlive that. */
export interface PoolMember {
  readonly id: string;
  readonly entry: CatalogEntry;
  readonly summary: UsableSummary;
  /** Undefined while its engine restarts after a crash (or stays down after a crash loop). */
  serving: Serving | undefined;
  /** Its share of the routed calls (weight / sum of weights). */
  weight: number;
  /** Calls it took since it was loaded, routed or named. */
  calls: number;
  /** Set once an unload has begun: it takes no new calls, and its weight is 0. */
  unloading: boolean;
  /** When its engine failed lately (crashes, hangs, failed restarts). */
  failures: number[];
}

/** Whether `m` takes calls: its engine up and no unload begun. */
export function isUp(m: PoolMember): boolean {
  return m.serving !== undefined && !m.unloading;
}

function newMember(entry: CatalogEntry, summary: UsableSummary, weight: number): PoolMember {
  return { id: entry.id, entry, summary, serving: undefined, weight, calls: 0, unloading: false, failures: [] };
}

/** An unload has begun: no new calls, routed or named. */
function unloadingNow(m: PoolMember): void {
  m.unloading = true;
  m.weight = 0;
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
  /** Unload the old variants first when the new one does not fit beside them. */
  allowDowntime?: boolean;
}

export interface UnloadRequest {
  id: string;
  policy: "drain" | "cancel";
  drainTimeoutMs: number;
}

/** Which variant a call wants: one by name, or the routing policy's choice (sticky by key). */
export interface Admission {
  variant?: string;
  routingKey?: string;
}

export type EngineEvent = "crashed" | "hung" | "restarted" | "restart_failed" | "crash_loop";

export interface ServingPoolOptions {
  loader: VariantLoader;
  /** Calls that may wait for a slot, per variant. */
  maxQueue: number;
  log: Logger;
  /** Called whenever what serves changes: a load, an unload, a swap, new weights, an engine down or back. */
  onChange?(): void;
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
  /** The loaded variants, in the order they were loaded. */
  private readonly members = new Map<string, PoolMember>();
  /** What a load, unload or swap under way is doing; one at a time. */
  private changing: string | undefined;
  private swappingTo: string | undefined;
  /** Engines the watchdog killed, to tell a hang from a crash. */
  private readonly hung = new WeakSet<Serving["engine"]>();
  private admitting = true;
  private disposed = false;
  /** Emits "settled" whenever a call ends or a change does: what drains and shutdown wait on. */
  private readonly changes = new EventEmitter();
  /** What happened at startup (and to the engines since), for GetStatus. */
  readonly startupNotes: string[] = [];

  constructor(private readonly options: ServingPoolOptions) {
    // Each drain and the shutdown wait on it: a few at once are normal.
    this.changes.setMaxListeners(0);
  }

  /** The loaded variants, in load order. */
  get loaded(): readonly PoolMember[] {
    return [...this.members.values()];
  }

  /** The variant of most weight with its engine up (the first loaded on a tie): "the" variant in service. */
  get current(): Serving | undefined {
    let best: PoolMember | undefined;
    for (const m of this.members.values()) {
      if (isUp(m) && m.weight > 0 && (!best || m.weight > best.weight)) best = m;
    }
    return best?.serving;
  }

  get swapInProgress(): string | undefined {
    return this.swappingTo;
  }

  /** The weights in force, by variant id. */
  get weights(): Record<string, number> {
    return Object.fromEntries([...this.members.values()].map((m) => [m.id, m.weight]));
  }

  /** Calls admitted and not finished, on every loaded variant (draining ones too). */
  get inFlight(): number {
    let n = 0;
    for (const m of this.members.values()) n += m.serving?.inference.inFlight ?? 0;
    return n;
  }

  /**
   * The inference a new call goes to: the variant it names, or the routing
   * policy's choice. `unavailable` while the server is shutting down or no
   * routed variant is up; a named variant that is unknown is `not_found`,
   * one that is known but not loaded `failed_precondition`.
   */
  async admit(want: Admission = {}): Promise<Inference> {
    if (!this.admitting) throw new ServiceError("unavailable", SHUTTING_DOWN);
    const member = want.variant ? await this.named(want.variant) : this.route(want.routingKey);
    member.calls++;
    return member.serving!.inference;
  }

  private async named(id: string): Promise<PoolMember> {
    const member = this.members.get(id);
    if (!member) {
      // Not found at all, or known and not loaded: the catalog tells.
      (await this.options.loader.catalog()).get(id);
      throw new ServiceError(
        "failed_precondition",
        `variant "${id}" is not loaded (loaded: ${this.loadedNames()}); load it with the admin LoadVariant call, or start the server with --variants`,
      );
    }
    if (member.unloading) throw new ServiceError("unavailable", `variant "${id}" is being unloaded; retry without naming it`);
    if (!member.serving) throw new ServiceError("unavailable", `the engine of variant "${id}" is restarting; retry shortly`);
    return member;
  }

  /**
   * The routing policy's choice among the routed variants whose engines are
   * up: at random by weight, or, with a key, by the key's hash (the same key,
   * the same variant, while the weights stay).
   */
  private route(key: string | undefined): PoolMember {
    const candidates = [...this.members.values()].filter((m) => m.weight > 0 && isUp(m));
    if (candidates.length === 0) {
      throw new ServiceError(
        "unavailable",
        this.swappingTo
          ? `the server is swapping to "${this.swappingTo}" with downtime; retry shortly`
          : this.members.size > 0
            ? "no variant the routing policy sends calls to is up; retry shortly"
            : "no model is loaded; retry shortly",
      );
    }
    const total = candidates.reduce((sum, m) => sum + m.weight, 0);
    const point = (key === undefined ? Math.random() : unitHash(key)) * total;
    let reached = 0;
    for (const m of candidates) {
      reached += m.weight;
      if (point < reached) return m;
    }
    return candidates.at(-1)!;
  }

  private loadedNames(): string {
    return [...this.members.keys()].map((id) => `"${id}"`).join(", ") || "none";
  }

  /**
   * Loads `variants` at startup, in order, each with its weight; one that
   * fails is reported (logs, startup notes) and the others load. With one
   * variant, the next of `fallback` is tried in its place until one loads.
   * Throws only when nothing loads.
   */
  async start(
    variants: readonly { id: string; weight: number }[],
    fallback: readonly string[],
    onDownload?: (id: string, p: DownloadProgress) => void,
  ): Promise<void> {
    const { log, loader } = this.options;
    const failures: string[] = [];
    const single = variants.length === 1;
    const order = single ? [variants[0]!.id, ...fallback] : variants.map((v) => v.id);
    const tryLoad = async (id: string, weight: number): Promise<boolean> => {
      try {
        const entry = (await loader.catalog()).get(id);
        if (this.members.has(entry.id)) throw new ServiceError("invalid_argument", `variant "${id}" is listed twice`);
        const summary = await loader.ensureUsable(entry, (p) => onDownload?.(id, p));
        const beside = this.servings();
        if (beside.length > 0) await loader.checkFits(beside, entry);
        const member = newMember(entry, summary, weight);
        member.serving = await this.start1(member);
        this.members.set(member.id, member);
        this.options.onChange?.();
        return true;
      } catch (error) {
        // Stopped while it downloaded: nothing else is tried.
        if (loader.stopped) throw error;
        const reason = `"${id}" could not be used: ${error instanceof Error ? error.message : String(error)}`;
        failures.push(reason);
        const last = order.indexOf(id) === order.length - 1;
        log.warn(
          { variant: id, reason },
          !single
            ? "variant failed to load; the others load"
            : last
              ? "variant failed; no fallback left"
              : "variant failed; trying the next in the fallback order",
        );
        return false;
      }
    };
    if (single) {
      for (const id of order) if (await tryLoad(id, variants[0]!.weight)) break;
    } else {
      for (const { id, weight } of variants) await tryLoad(id, weight);
    }
    if (this.members.size === 0) throw new Error(failures.join("; "));
    if (![...this.members.values()].some((m) => m.weight > 0)) {
      // The variants meant to take the traffic all failed: the first that loaded takes it.
      this.members.values().next().value!.weight = 100;
    }
    const serving = [...this.members.keys()].map((id) => `"${id}"`).join(", ");
    this.startupNotes.push(failures.length > 0 ? `serving ${serving} after: ${failures.join("; ")}` : `serving ${serving}`);
  }

  /** Every catalog entry with what its file says, and whether it is loaded or routed to. */
  list(): Promise<VariantView[]> {
    const members = [...this.members.values()];
    return this.options.loader.list(
      new Set(members.map((m) => m.entry.path)),
      new Set(members.filter((m) => m.weight > 0).map((m) => m.entry.path)),
    );
  }

  /** The engines up now, as loaded variants (what a new one must fit beside). */
  private servings(): Serving[] {
    return [...this.members.values()].flatMap((m) => (m.serving ? [m.serving] : []));
  }

  /** Runs `body` as the one change (load, unload, swap) under way; another is refused meanwhile. */
  private async exclusive<T>(what: string, body: () => Promise<T>): Promise<T> {
    if (this.changing !== undefined) {
      throw new ServiceError("failed_precondition", `${this.changing} is in progress; only one runs at a time`);
    }
    if (!this.admitting) throw new ServiceError("unavailable", SHUTTING_DOWN);
    this.changing = what;
    try {
      return await body();
    } finally {
      this.changing = undefined;
      this.swappingTo = undefined;
      this.changes.emit("settled");
    }
  }

  /**
   * Loads `id` beside the variants loaded, with weight 0: it serves the calls
   * that name it until SetRouting gives it a share. Refused with
   * `resource_exhausted` and the numbers when it does not fit beside them.
   * `signal` (the call's) stops it, the new engine ended.
   */
  load(id: string, emit: (event: SwapEvent) => void, signal?: AbortSignal): Promise<void> {
    return this.exclusive(`a load of "${id}"`, async () => {
      const { loader } = this.options;
      const stopIfCancelled = cancelCheck(signal, `the load of "${id}" was cancelled; nothing changed`);
      emit({ phase: "checking" });
      const entry = (await loader.catalog()).get(id);
      if (this.members.has(entry.id)) throw new ServiceError("failed_precondition", `variant "${id}" is already loaded`);
      const summary = await loader.ensureUsable(entry, downloadEmitter(emit), signal);
      stopIfCancelled();
      const beside = this.servings();
      if (beside.length > 0) await loader.checkFits(beside, entry);
      const member = newMember(entry, summary, 0);
      member.serving = await this.loadCancellable(member, emit, signal, stopIfCancelled);
      this.members.set(member.id, member);
      this.options.log.info({ variant: id }, "variant loaded");
      this.options.onChange?.();
      emit({ phase: "done", message: `"${id}" loaded; it serves calls that name it, and routed calls once it has a weight` });
    });
  }

  /**
   * Unloads `request.id`: the routing policy stops choosing it at once, its
   * calls drain (or are cancelled), then its engine ends. The last loaded
   * variant, or the only one routed to, is refused.
   */
  unload(request: UnloadRequest, emit: (event: SwapEvent) => void): Promise<void> {
    return this.exclusive(`an unload of "${request.id}"`, async () => {
      const member = this.members.get(request.id);
      if (!member) {
        (await this.options.loader.catalog()).get(request.id);
        throw new ServiceError("failed_precondition", `variant "${request.id}" is not loaded (loaded: ${this.loadedNames()})`);
      }
      if (this.members.size === 1) {
        throw new ServiceError(
          "failed_precondition",
          `variant "${request.id}" is the only one loaded; load another first, or swap to it with SwapVariant`,
        );
      }
      const othersRouted = [...this.members.values()].some((m) => m !== member && m.weight > 0);
      if (member.weight > 0 && !othersRouted) {
        throw new ServiceError(
          "failed_precondition",
          `variant "${request.id}" takes every routed call; give another loaded variant a weight with SetRouting first`,
        );
      }
      unloadingNow(member);
      this.options.onChange?.();
      await this.retire(member, request, `unload of "${request.id}"`, emit);
      emit({ phase: "done" });
    });
  }

  /**
   * Sets the routing weights: every id must be loaded (and not unloading),
   * the weights finite, non-negative and not all zero; loaded variants left
   * out get 0. On any error nothing changes.
   */
  setRouting(weights: Record<string, number>): Record<string, number> {
    const entries = Object.entries(weights);
    for (const [id, weight] of entries) {
      const member = this.members.get(id);
      if (!member || member.unloading) {
        throw new ServiceError(
          "invalid_argument",
          `weights name "${id}", which is not loaded (loaded: ${this.loadedNames()}); load it with LoadVariant first`,
        );
      }
      if (!Number.isFinite(weight) || weight < 0 || !Number.isInteger(weight)) {
        throw new ServiceError("invalid_argument", `the weight of "${id}" must be a whole number from 0 up (got ${weight})`);
      }
    }
    if (!entries.some(([, weight]) => weight > 0)) {
      throw new ServiceError(
        "invalid_argument",
        "the weights are all zero: at least one loaded variant must take the routed calls",
      );
    }
    for (const m of this.members.values()) m.weight = weights[m.id] ?? 0;
    this.options.log.info({ weights: this.weights }, "routing weights set");
    this.options.onChange?.();
    return this.weights;
  }

  /**
   * Swaps to `request.id`: loads it (unless it is loaded), routes every call
   * to it, then unloads every other variant. `emit` sees each phase. Any
   * failure before the switch throws a ServiceError and leaves what served
   * serving, untouched. `signal` (the call's) stops a swap before the switch
   * the same way, the new engine ended; after the switch the swap goes on to
   * its end, draining the old variants' calls.
   */
  swap(request: SwapRequest, emit: (event: SwapEvent) => void, signal?: AbortSignal): Promise<void> {
    return this.exclusive(`a swap to "${request.id}"`, async () => {
      this.swappingTo = request.id;
      const { log, loader } = this.options;
      const stopIfCancelled = cancelCheck(signal, `the swap to "${request.id}" was cancelled before the switch; nothing changed`);
      try {
        emit({ phase: "checking" });
        const entry = (await loader.catalog()).get(request.id);
        const others = () => [...this.members.values()].filter((m) => m.id !== entry.id);
        let target = this.members.get(entry.id);
        if (target && !others().some((m) => m.weight > 0)) {
          throw new ServiceError("failed_precondition", `variant "${request.id}" is already in service`);
        }
        if (!target) {
          const summary = await loader.ensureUsable(entry, downloadEmitter(emit), signal);
          stopIfCancelled();
          const old = this.servings();
          const shortage = old.length > 0 ? await loader.shortage(old, entry) : undefined;
          if (shortage && !request.allowDowntime) {
            throw new ServiceError(
              "failed_precondition",
              `${shortage}; swap with allow_downtime to unload ${others()
                .map((m) => `"${m.id}"`)
                .join(" and ")} first`,
            );
          }
          stopIfCancelled();
          const member = newMember(entry, summary, 0);
          if (shortage) {
            // Downtime: the old variants go first, then the new one loads.
            log.warn({ to: entry.id, shortage }, "swapping with downtime: unloading the old variants first");
            const retired = others();
            const weights = retired.map((m) => m.weight);
            for (const m of retired) unloadingNow(m);
            this.options.onChange?.();
            await Promise.all(retired.map((m) => this.retire(m, request, `swap to "${entry.id}"`, emit)));
            try {
              member.serving = await this.loadCancellable(member, emit, signal, stopIfCancelled);
            } catch (error) {
              log.error(
                { variant: entry.id, err: error },
                "the new variant failed to load during a downtime swap; reloading the old ones",
              );
              for (const [i, m] of retired.entries()) {
                const again = newMember(m.entry, m.summary, weights[i]!);
                again.serving = await this.start1(again);
                this.members.set(again.id, again);
              }
              this.options.onChange?.();
              throw error;
            }
            this.members.set(member.id, member);
            member.weight = 100;
            this.options.onChange?.();
            emit({ phase: "switched", message: `new calls go to "${entry.id}"` });
            emit({ phase: "done" });
            return;
          }
          member.serving = await this.loadCancellable(member, emit, signal, stopIfCancelled);
          this.members.set(member.id, member);
          target = member;
        }
        const retired = others();
        for (const m of retired) unloadingNow(m);
        target.weight = 100;
        this.options.onChange?.();
        log.info({ from: retired.map((m) => m.id), to: target.id }, "switched variant");
        emit({ phase: "switched", message: `new calls go to "${target.id}"` });
        await Promise.all(retired.map((m) => this.retire(m, request, `swap to "${target.id}"`, emit)));
        emit({ phase: "done" });
      } catch (error) {
        // A stop that came while the engine started shows as a failed load: it is the cancel.
        stopIfCancelled();
        throw error;
      }
    });
  }

  /** Loads `member`'s engine for a load or a swap; stopped (the engine ended) when `signal` fires. */
  private async loadCancellable(
    member: PoolMember,
    emit: (event: SwapEvent) => void,
    signal: AbortSignal | undefined,
    stopIfCancelled: () => void,
  ): Promise<Serving> {
    const serving = await this.start1(member, {
      onProgress: (progress) => emit({ phase: "loading", percent: progress * 100 }),
      onWarming: () => emit({ phase: "warming" }),
      signal,
    });
    if (signal?.aborted) {
      await serving.engine.dispose();
      stopIfCancelled();
    }
    return serving;
  }

  /**
   * Measures variants one at a time (`ids`, or every downloaded usable one)
   * beside the variants loaded; see VariantLoader.evaluate.
   */
  evaluate(
    ids: readonly string[],
    options: EvaluateOptions,
    onResult: (result: Evaluation) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return this.options.loader.evaluate(ids, options, onResult, this.servings(), signal);
  }

  /** From now on new calls and changes get `unavailable`; running ones go on. */
  stopAdmitting(): void {
    this.admitting = false;
  }

  /**
   * Resolves true once no call is running or queued and no change is under
   * way (a swap is a running call too), or false after `timeoutMs` if some still are.
   */
  async settle(timeoutMs: number): Promise<boolean> {
    const busy = () => this.inFlight > 0 || this.changing !== undefined;
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
    const engines = this.servings().map((s) => s.engine);
    this.members.clear();
    await Promise.all(engines.map((e) => e.dispose()));
  }

  /**
   * Starts `member`'s engine into a Serving of its own, supervised (a crash
   * restarts this variant only); ended at once if the pool was disposed meanwhile.
   */
  private async start1(member: PoolMember, options?: LoadOptions): Promise<Serving> {
    const loaded = await this.options.loader.load(member.entry, member.summary, options);
    if (this.disposed) {
      // Shut down while it loaded (a swap, a restart): it never serves.
      await loaded.engine.dispose();
      throw new ServiceError("unavailable", "the server is shutting down");
    }
    const { engine } = loaded;
    const id = member.id;
    const scheduler = new SlotScheduler(engine.info.sequences, this.options.maxQueue);
    const inference = new Inference(engine, scheduler, id, () => this.changes.emit("settled"));
    const serving: Serving = { ...loaded, scheduler, inference };
    engine.watch(this.options.engineWatchdogMs, (silentMs) => {
      this.hung.add(engine);
      this.options.log.error({ variant: id, pid: engine.pid, silentMs }, "engine process not answering; killing it");
    });
    engine.onExit((code, signal) => {
      if (member.serving !== serving || this.members.get(id) !== member || member.unloading || this.disposed) return;
      const hung = this.hung.has(engine);
      this.options.log.error({ variant: id, code, signal, hung }, "engine process of a loaded variant exited");
      member.serving = undefined;
      this.options.onChange?.();
      void this.recover(member, hung ? "hung" : "crashed");
    });
    return serving;
  }

  /**
   * Restarts the dead engine of `member` on the same variant, after a delay
   * that doubles with each failure (0.25 s … 30 s). More than `maxRestarts`
   * failures within five minutes is a crash loop: it stops trying, says so
   * in the logs and GetStatus, and the variant stays down (a swap or an
   * unload still works). The other variants serve on meanwhile.
   */
  private async recover(member: PoolMember, reason: "crashed" | "hung"): Promise<void> {
    const { log, onEngineEvent } = this.options;
    const { id } = member;
    onEngineEvent?.(id, reason);
    const current = () => this.members.get(id) === member && !member.unloading && !this.disposed;
    for (;;) {
      const now = Date.now();
      member.failures = [...member.failures.filter((t) => now - t < RESTART_WINDOW_MS), now];
      if (member.failures.length > this.options.maxRestarts) {
        const note = `engine of "${id}" failed ${member.failures.length} times in ${RESTART_WINDOW_MS / 60_000} minutes; not restarted (crash loop)`;
        log.error({ variant: id, failures: member.failures.length }, note);
        this.startupNotes.push(note);
        onEngineEvent?.(id, "crash_loop");
        return;
      }
      const delay = Math.min(RESTART_MAX_DELAY_MS, RESTART_FIRST_DELAY_MS * 2 ** (member.failures.length - 1));
      await new Promise((r) => setTimeout(r, delay));
      // A swap, an unload or a shutdown in the meantime decides instead.
      if (!current()) return;
      try {
        const next = await this.start1(member);
        if (!current()) {
          await next.engine.dispose();
          return;
        }
        member.serving = next;
        this.options.onChange?.();
        log.info({ variant: id, pid: next.engine.pid }, "engine restarted");
        onEngineEvent?.(id, "restarted");
        return;
      } catch (error) {
        log.error({ variant: id, err: error }, "engine restart failed");
        onEngineEvent?.(id, "restart_failed");
      }
    }
  }

  /**
   * Drains or cancels `member`'s calls, ends its engine process and takes it
   * out of the pool. Each call that ends is reported (`draining`, with the
   * calls left).
   */
  private async retire(
    member: PoolMember,
    request: { policy: "drain" | "cancel"; drainTimeoutMs: number },
    why: string,
    emit: (event: SwapEvent) => void,
  ): Promise<void> {
    const serving = member.serving;
    try {
      if (serving) {
        const { inference } = serving;
        if (request.policy === "cancel") inference.cancelAll(`cancelled by the server: variant ${why} (policy CANCEL)`);
        let left = inference.inFlight;
        emit({ phase: "draining", inFlight: left });
        const timeout = AbortSignal.timeout(request.drainTimeoutMs);
        let cancelled = request.policy === "cancel";
        while (inference.inFlight > 0) {
          try {
            await once(this.changes, "settled", cancelled ? {} : { signal: timeout });
          } catch {
            cancelled = true;
            inference.cancelAll(`cancelled by the server: variant ${why} (drain timeout of ${request.drainTimeoutMs} ms)`);
          }
          // Calls ending elsewhere wake this too: only this variant's count is news.
          if (inference.inFlight !== left) {
            left = inference.inFlight;
            emit({ phase: "draining", inFlight: left });
          }
        }
        await serving.engine.dispose();
      }
      emit({ phase: "released", message: `"${member.id}" unloaded` });
    } finally {
      if (this.members.get(member.id) === member) this.members.delete(member.id);
      this.options.onChange?.();
    }
  }
}

/** A check that throws `cancelled` with `message` once `signal` has fired. */
function cancelCheck(signal: AbortSignal | undefined, message: string): () => void {
  return () => {
    if (signal?.aborted) throw new ServiceError("cancelled", message);
  };
}

function downloadEmitter(emit: (event: SwapEvent) => void): (p: DownloadProgress) => void {
  return ({ bytesDone, bytesTotal }) =>
    emit({ phase: "downloading", bytesDone, bytesTotal, percent: bytesTotal > 0 ? (100 * bytesDone) / bytesTotal : 0 });
}

/** A routing key's place in [0, 1): the same key, the same place. */
function unitHash(key: string): number {
  return createHash("sha256").update(key).digest().readUInt32BE(0) / 2 ** 32;
}
