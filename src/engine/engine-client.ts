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
  type DeviceMemory,
  type EngineInfo,
  type EngineOptions,
  type FinishReason,
  type FromEngine,
  type GenerationInput,
  greedySampling,
  type MemoryEstimate,
  type SamplingSettings,
  type ToEngine,
} from "./protocol.js";

export type GenerationEvent =
  | { type: "started"; promptTokens: number }
  | { type: "chunk"; text: string; tokens: number[] }
  | {
      type: "done";
      finishReason: FinishReason;
      text: string;
      tokens: number[];
      generatedTokens: number;
      prefillMs: number;
    };

interface Pending {
  events?: AsyncQueue<GenerationEvent>;
  tokenized?: { resolve(tokens: number[]): void; reject(error: unknown): void };
  memory?: { resolve(memory: DeviceMemory): void; reject(error: unknown): void };
  estimate?: { resolve(estimate: MemoryEstimate): void; reject(error: unknown): void };
  perplexity?: { resolve(result: { perplexity: number; scoredTokens: number }): void; reject(error: unknown): void };
}

/** How the engine entry runs: from TypeScript sources under tsx, or built JavaScript. */
function engineEntry(): { path: string; execArgv: string[] } {
  const self = import.meta.url;
  if (self.endsWith(".ts")) {
    return { path: fileURLToPath(new URL("./engine-process.ts", self)), execArgv: ["--import", "tsx"] };
  }
  return { path: fileURLToPath(new URL("./engine-process.js", self)), execArgv: [] };
}

export class EngineProcess {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private exited = false;
  private readonly exitListeners: ((code: number | null, signal: NodeJS.Signals | null) => void)[] = [];

  private constructor(
    private readonly child: ChildProcess,
    readonly info: EngineInfo,
    private readonly log: Logger,
  ) {
    child.on("message", (message: FromEngine) => this.onMessage(message));
    child.on("exit", (code, signal) => {
      this.exited = true;
      const error = new ServiceError("unavailable", "the engine process stopped; the call was not completed");
      for (const entry of this.pending.values()) {
        entry.events?.fail(error);
        entry.tokenized?.reject(error);
        entry.memory?.reject(error);
        entry.estimate?.reject(error);
        entry.perplexity?.reject(error);
      }
      this.pending.clear();
      for (const listener of this.exitListeners) listener(code, signal);
    });
  }

  /** Starts an engine process and resolves once its model is loaded; `onProgress` gets 0…1. */
  static start(options: EngineOptions, log: Logger, onProgress?: (progress: number) => void): Promise<EngineProcess> {
    const entry = engineEntry();
    const child = fork(entry.path, [JSON.stringify(options)], {
      execArgv: entry.execArgv,
      env: { ...process.env, UV_THREADPOOL_SIZE: "1" },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      serialization: "json",
    });
    return new Promise((resolve, reject) => {
      const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
        reject(new Error(`engine process exited while loading (code ${code}, signal ${signal})`));
      child.once("exit", onExit);
      child.once("error", reject);
      child.on("message", function first(message: FromEngine) {
        if (message.type === "ready") {
          child.off("message", first);
          child.off("exit", onExit);
          child.off("error", reject);
          resolve(new EngineProcess(child, message.info, log));
        } else if (message.type === "load-progress") {
          onProgress?.(message.progress);
        } else if (message.type === "load-failed") {
          child.off("message", first);
          child.off("exit", onExit);
          reject(new Error(message.message));
        }
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  onExit(listener: (code: number | null, signal: NodeJS.Signals | null) => void): void {
    this.exitListeners.push(listener);
  }

  /**
   * Generates on sequence `slot`. Aborting `signal` asks the engine to stop
   * after the token in flight; the stream then ends with a `cancelled` done.
   */
  generate(
    slot: number,
    input: GenerationInput,
    sampling: SamplingSettings,
    signal: AbortSignal,
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
    this.send({ type: "generate", id, slot, input, sampling });
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
    if (this.exited) return Promise.reject(new ServiceError("unavailable", "the engine process is not running"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { tokenized: { resolve, reject } });
      this.send({ type: "tokenize", id, text, special });
    });
  }

  /** The device memory as the engine sees it now. */
  memory(): Promise<DeviceMemory> {
    if (this.exited) return Promise.reject(new ServiceError("unavailable", "the engine process is not running"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { memory: { resolve, reject } });
      this.send({ type: "memory", id });
    });
  }

  /** What a model would need with this engine's settings. */
  estimate(modelPath: string): Promise<MemoryEstimate> {
    if (this.exited) return Promise.reject(new ServiceError("unavailable", "the engine process is not running"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { estimate: { resolve, reject } });
      this.send({ type: "estimate", id, modelPath });
    });
  }

  /** Perplexity of the first `maxTokens` tokens of `text` (sequence 0 must be idle). */
  perplexity(text: string, maxTokens: number): Promise<{ perplexity: number; scoredTokens: number }> {
    if (this.exited) return Promise.reject(new ServiceError("unavailable", "the engine process is not running"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { perplexity: { resolve, reject } });
      this.send({ type: "perplexity", id, text, maxTokens });
    });
  }

  /** One greedy token on sequence 0: the model decodes before it takes calls. */
  async warm(): Promise<void> {
    for await (const _event of this.generate(0, { kind: "raw", text: "नमस्ते" }, greedySampling(1), new AbortController().signal)) {
      // a decode ran; the token itself does not matter
    }
  }

  private send(message: ToEngine): void {
    if (!this.exited && this.child.connected) this.child.send(message);
  }

  private onMessage(message: FromEngine): void {
    if (!("id" in message)) return;
    const entry = this.pending.get(message.id);
    if (!entry) return;
    switch (message.type) {
      case "started":
        entry.events?.push({ type: "started", promptTokens: message.promptTokens });
        break;
      case "chunk":
        entry.events?.push({ type: "chunk", text: message.text, tokens: message.tokens });
        break;
      case "done": {
        const { id: _, ...done } = message;
        entry.events?.push(done);
        entry.events?.end();
        this.pending.delete(message.id);
        break;
      }
      case "failed":
        if (message.kind === "internal") this.log.error({ cause: message.message }, "engine error");
        entry.events?.fail(
          new ServiceError(message.kind, message.kind === "internal" ? "internal engine error" : message.message),
        );
        entry.tokenized?.reject(new ServiceError(message.kind, message.message));
        entry.memory?.reject(new ServiceError(message.kind, message.message));
        entry.estimate?.reject(new ServiceError(message.kind, message.message));
        entry.perplexity?.reject(new ServiceError(message.kind, message.message));
        this.pending.delete(message.id);
        break;
      case "tokenized":
        entry.tokenized?.resolve(message.tokens);
        this.pending.delete(message.id);
        break;
      case "perplexity":
        entry.perplexity?.resolve({ perplexity: message.perplexity, scoredTokens: message.scoredTokens });
        this.pending.delete(message.id);
        break;
      case "estimate":
        entry.estimate?.resolve(message.estimate);
        this.pending.delete(message.id);
        break;
      case "memory":
        entry.memory?.resolve(message.memory);
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
