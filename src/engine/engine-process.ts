/**
 * The server's side of an engine process: starts it, sends it work and turns
 * its messages back into per-request event streams. A dead engine fails the
 * calls it held with `unavailable`.
 */
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { ServiceError } from "../errors.js";
import { AsyncQueue } from "../util/async-queue.js";
import {
  type GenerationInput,
  type GenerationOutcome,
  type GenerationProgress,
  greedySampling,
  type SamplingSettings,
} from "../generation.js";
import {
  type DeviceMemory,
  type EngineCall,
  type EngineCalls,
  type EngineInfo,
  type EngineOptions,
  type FromEngine,
  type MemoryEstimate,
  type ToEngine,
  sharedClockMs,
} from "./protocol.js";
import { preloadEnv, threadPoolFor } from "./thread-pool.js";

export type GenerationEvent =
  | { type: "started"; promptTokens: number }
  /** `hopMs`: from the engine's send to the server's receipt of this chunk. */
  | ({ type: "chunk"; text: string; tokens: number[]; hopMs: number } & GenerationProgress)
  | ({ type: "done" } & GenerationOutcome);

interface Pending {
  /** A generation's events. */
  events?: AsyncQueue<GenerationEvent>;
  /** A call's reply. */
  reply?: { resolve(value: unknown): void; reject(error: unknown): void };
}

/** How the engine entry runs: from TypeScript sources under tsx, or built JavaScript. */
function engineEntry(): { path: string; execArgv: string[] } {
  const self = import.meta.url;
  if (self.endsWith(".ts")) {
    return { path: fileURLToPath(new URL("./child/main.ts", self)), execArgv: ["--import", "tsx"] };
  }
  return { path: fileURLToPath(new URL("./child/main.js", self)), execArgv: [] };
}

export class EngineProcess {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private exited = false;
  /** KV cells holding tokens, of all the context's, as the engine last said (after each generation). */
  kvCells = { used: 0, total: 0 };
  private watchdog: NodeJS.Timeout | undefined;
  private readonly exitListeners: ((code: number | null, signal: NodeJS.Signals | null) => void)[] = [];

  private constructor(
    private readonly child: ChildProcess,
    readonly info: EngineInfo,
    private readonly log: Logger,
  ) {
    child.on("message", (message: FromEngine) => this.onMessage(message));
    child.on("exit", (code, signal) => {
      this.exited = true;
      clearInterval(this.watchdog);
      const error = new ServiceError("unavailable", "the engine process stopped; the call was not completed");
      for (const entry of this.pending.values()) {
        entry.events?.fail(error);
        entry.reply?.reject(error);
      }
      this.pending.clear();
      for (const listener of this.exitListeners) listener(code, signal);
    });
  }

  /**
   * Starts an engine process and resolves once its model is loaded; `onProgress` gets 0…1.
   * `signal` stops a start in progress: the process is killed and the start rejects.
   */
  static async start(
    options: EngineOptions,
    log: Logger,
    onProgress?: (progress: number) => void,
    signal?: AbortSignal,
  ): Promise<EngineProcess> {
    const entry = engineEntry();
    const pool = await threadPoolFor(options.threadPool);
    if (signal?.aborted) throw new Error("the engine's start was stopped");
    const child = fork(entry.path, [JSON.stringify(options)], {
      execArgv: entry.execArgv,
      env: { ...preloadEnv(pool), UV_THREADPOOL_SIZE: "1" },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      serialization: "json",
    });
    const kill = () => child.kill("SIGKILL");
    signal?.addEventListener("abort", kill, { once: true });
    if (signal?.aborted) kill();
    return new Promise<EngineProcess>((resolve, reject) => {
      const onExit = (code: number | null, exitSignal: NodeJS.Signals | null) =>
        reject(
          signal?.aborted
            ? new Error("the engine's start was stopped")
            : new Error(`engine process exited while loading (code ${code}, signal ${exitSignal})`),
        );
      child.once("exit", onExit);
      child.once("error", reject);
      child.on("message", function first(message: FromEngine) {
        if (message.type === "ready") {
          child.off("message", first);
          child.off("exit", onExit);
          child.off("error", reject);
          const info = "reason" in pool ? { ...message.info, threadPoolReason: pool.reason } : message.info;
          resolve(new EngineProcess(child, info, log));
        } else if (message.type === "load-progress") {
          onProgress?.(message.progress);
        } else if (message.type === "load-failed") {
          child.off("message", first);
          child.off("exit", onExit);
          reject(new Error(message.message));
        }
      });
    }).finally(() => signal?.removeEventListener("abort", kill));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  onExit(listener: (code: number | null, signal: NodeJS.Signals | null) => void): void {
    this.exitListeners.push(listener);
  }

  /**
   * Pings the engine every `timeoutMs / 4`; when no answer has come for
   * `timeoutMs` (a hung or stopped process: its main thread only routes
   * messages, decodes run on another thread), kills it, so its calls fail
   * and its exit listeners run as for a crash.
   */
  watch(timeoutMs: number, onHang: (silentMs: number) => void): void {
    let answeredAt = Date.now();
    this.watchdog = setInterval(
      () => {
        const silent = Date.now() - answeredAt;
        if (silent >= timeoutMs) {
          clearInterval(this.watchdog);
          onHang(silent);
          this.child.kill("SIGKILL");
          return;
        }
        this.call("ping", {}).then(
          () => (answeredAt = Date.now()),
          () => {},
        );
      },
      Math.max(50, Math.floor(timeoutMs / 4)),
    );
    this.watchdog.unref();
  }

  /**
   * Generates on a sequence the engine chooses (the caller holds one of its
   * slots). Aborting `signal` asks the engine to stop after the token in
   * flight; the stream then ends with a `cancelled` done. `cache: false`
   * neither uses nor leaves cached KV cells.
   */
  generate(
    input: GenerationInput,
    sampling: SamplingSettings,
    signal: AbortSignal,
    options: { cache?: boolean } = {},
  ): AsyncIterable<GenerationEvent> {
    const events = new AsyncQueue<GenerationEvent>();
    if (this.exited) {
      events.fail(new ServiceError("unavailable", "the engine process is not running"));
      return events;
    }
    const id = this.nextId++;
    this.pending.set(id, { events });
    const onAbort = () => this.send({ type: "cancel", id });
    signal.addEventListener("abort", onAbort, { once: true });
    const cleanup = () => signal.removeEventListener("abort", onAbort);
    this.send({ type: "generate", id, input, sampling, cache: options.cache });
    if (signal.aborted) onAbort();
    return {
      [Symbol.asyncIterator]: () => {
        const it = events[Symbol.asyncIterator]();
        return {
          next: async () => {
            try {
              const result = await it.next();
              if (result.done) cleanup();
              return result;
            } catch (error) {
              cleanup();
              throw error;
            }
          },
          return: async () => {
            cleanup();
            return { value: undefined, done: true };
          },
        };
      },
    };
  }

  tokenize(text: string, special: boolean): Promise<number[]> {
    return this.call("tokenize", { text, special });
  }

  /** The device memory as the engine sees it now. */
  memory(): Promise<DeviceMemory> {
    return this.call("memory", {});
  }

  /** What a model would need with this engine's settings. */
  estimate(modelPath: string): Promise<MemoryEstimate> {
    return this.call("estimate", { modelPath });
  }

  /** Perplexity of the first `maxTokens` tokens of `text` (sequence 0 must be idle). */
  perplexity(text: string, maxTokens: number): Promise<EngineCalls["perplexity"]["result"]> {
    return this.call("perplexity", { text, maxTokens });
  }

  private call<M extends keyof EngineCalls>(method: M, args: EngineCalls[M]["args"]): Promise<EngineCalls[M]["result"]> {
    if (this.exited) return Promise.reject(new ServiceError("unavailable", "the engine process is not running"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { reply: { resolve: resolve as (value: unknown) => void, reject } });
      this.send({ type: "call", id, call: { method, args } as EngineCall });
    });
  }

  /** One greedy token: the model decodes before it takes calls (and caches nothing). */
  async warm(): Promise<void> {
    const events = this.generate({ kind: "raw", text: "नमस्ते" }, greedySampling(1), new AbortController().signal, {
      cache: false,
    });
    for await (const _event of events) {
      // a decode ran; the token itself does not matter
    }
  }

  private send(message: ToEngine): void {
    if (!this.exited && this.child.connected) this.child.send(message);
  }

  private onMessage(message: FromEngine): void {
    if (message.type === "kv-cells") {
      this.kvCells = { used: message.used, total: message.total };
      return;
    }
    if (message.type === "threads") {
      const { decision } = message;
      this.info.threads = decision.threads;
      // A round that keeps the count is routine (they grow rarer); a change is news.
      this.log[decision.outcome === "switched" ? "info" : "debug"](
        {
          threads: decision.threads,
          previous: decision.previous,
          outcome: decision.outcome,
          sequences: decision.size,
          stepMs: decision.stepMs,
        },
        decision.outcome === "switched"
          ? `decode threads: ${decision.previous} → ${decision.threads}, faster under this load`
          : `decode threads: kept ${decision.threads}, the other count was ${decision.outcome === "cut" ? "much slower" : "not faster"} under this load`,
      );
      return;
    }
    if (!("id" in message)) return;
    const entry = this.pending.get(message.id);
    if (!entry) return;
    switch (message.type) {
      case "started":
        entry.events?.push({ type: "started", promptTokens: message.promptTokens });
        break;
      case "chunk":
        entry.events?.push({
          type: "chunk",
          text: message.text,
          tokens: message.tokens,
          prefillMs: message.prefillMs,
          batchSize: message.batchSize,
          cachedTokens: message.cachedTokens,
          hopMs: sharedClockMs() - message.sentAt,
        });
        break;
      case "done": {
        const { id: _, ...done } = message;
        entry.events?.push(done);
        entry.events?.end();
        this.pending.delete(message.id);
        break;
      }
      case "failed": {
        // An internal error's cause (a stack) is logged here and never travels further.
        if (message.kind === "internal") this.log.error({ cause: message.message }, "engine error");
        const error = new ServiceError(message.kind, message.kind === "internal" ? "internal engine error" : message.message);
        entry.events?.fail(error);
        entry.reply?.reject(error);
        this.pending.delete(message.id);
        break;
      }
      case "result":
        entry.reply?.resolve(message.value);
        this.pending.delete(message.id);
        break;
    }
  }

  /** Asks the engine to stop and waits for it; kills it after `timeoutMs`. Idempotent. */
  async dispose(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.send({ type: "shutdown" });
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}
