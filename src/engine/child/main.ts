/**
 * Entry of an engine process (a child of the server). It loads one model and
 * serves the server's messages over IPC. It runs with UV_THREADPOOL_SIZE=1,
 * set by the parent before Node starts: node-llama-cpp decodes on the libuv
 * pool, and one pool thread keeps its decodes on one thread.
 */
import os from "node:os";
import { LlamaEngine } from "./llama-engine.js";
import {
  type EngineCall,
  type EngineCalls,
  type EngineOptions,
  type FromEngine,
  type ToEngine,
  sharedClockMs,
} from "../protocol.js";
import { ServiceError } from "../../errors.js";

function send(message: FromEngine): void {
  if (process.connected) process.send?.(message);
}

/**
 * A generation's messages, in their order. Where the decode threads leave a
 * core free, they are sent once the current callbacks are done: a token's
 * chunk is released while the decode loop is still sampling, and the loop
 * queues its next decode in the same turn, so the message's serializing and
 * write then run beside that decode on the free core instead of before it.
 * Where every core decodes, they go at once, before the decode starts: then
 * they would wait for it, or take a core from it (bench/results/outbox-ab/:
 * the first token 8.5 → 16 ms at 2 threads on 2 cores when deferred there).
 * Every message of a generation goes this way, so none overtakes another.
 */
const cores = os.availableParallelism();
const outbox: FromEngine[] = [];
function sendSoon(message: FromEngine): void {
  outbox.push(message);
  if (loaded.info.threads >= cores) flushOutbox();
  else if (outbox.length === 1) setImmediate(flushOutbox);
}
function flushOutbox(): void {
  for (const message of outbox.splice(0)) {
    // The hop is timed from the write.
    if (message.type === "chunk") message.sentAt = sharedClockMs();
    send(message);
  }
}

const options = JSON.parse(process.argv[2] ?? "{}") as EngineOptions;
const running = new Map<number, AbortController>();
let shuttingDown = false;

// The server went away (it exited, or was killed) while the model loads: nobody will ever use this
// engine, so it ends now rather than finish loading into an orphan. Once loaded, shutdown() takes over.
let engine: LlamaEngine | undefined;
process.on("disconnect", () => void shutdown());
// (It may have gone while this module's imports were still loading, before the listener existed.)
if (!process.connected) process.exit(0);
try {
  engine = await LlamaEngine.load(
    options,
    (progress) => send({ type: "load-progress", progress }),
    (decision) => send({ type: "threads", decision }),
  );
} catch (error) {
  send({ type: "load-failed", message: error instanceof Error ? error.message : String(error) });
  process.exit(1);
}
if (!process.connected) await shutdown();
const loaded = engine;

process.on("message", (message: ToEngine) => {
  switch (message.type) {
    case "generate":
      void generate(message);
      break;
    case "cancel":
      running.get(message.id)?.abort();
      break;
    case "call":
      void call(message.id, message.call);
      break;
    case "shutdown":
      void shutdown();
      break;
  }
});

/** How an error travels back: a domain error keeps its kind; anything else is internal, with its stack. */
function failure(id: number, error: unknown): FromEngine {
  if (error instanceof ServiceError) return { type: "failed", id, kind: error.kind, message: error.message };
  return {
    type: "failed",
    id,
    kind: "internal",
    message: error instanceof Error ? (error.stack ?? error.message) : String(error),
  };
}

const calls: {
  [M in keyof EngineCalls]: (args: EngineCalls[M]["args"]) => EngineCalls[M]["result"] | Promise<EngineCalls[M]["result"]>;
} = {
  ping: () => true,
  tokenize: ({ text, special }) => loaded.tokenize(text, special),
  memory: () => loaded.memory(),
  estimate: ({ modelPath }) => loaded.estimate(modelPath),
  perplexity: ({ text, maxTokens }) => loaded.perplexity(text, maxTokens),
};

async function call(id: number, { method, args }: EngineCall): Promise<void> {
  try {
    const handler = calls[method] as (args: unknown) => unknown;
    send({ type: "result", id, value: await handler(args) });
  } catch (error) {
    send(failure(id, error));
  }
}

async function generate(message: Extract<ToEngine, { type: "generate" }>): Promise<void> {
  const { id } = message;
  const controller = new AbortController();
  running.set(id, controller);
  let end: FromEngine;
  try {
    const result = await loaded.generate(
      message.input,
      message.sampling,
      controller.signal,
      {
        started: (promptTokens) => sendSoon({ type: "started", id, promptTokens }),
        chunk: ({ text, tokens }, progress) => sendSoon({ type: "chunk", id, text, tokens, ...progress, sentAt: 0 }),
      },
      { cache: message.cache },
    );
    end = { type: "done", id, ...result };
  } catch (error) {
    end = failure(id, error);
  }
  running.delete(id);
  // The cell count first (a failed generation emptied its sequence: it changes either way), so that
  // the server's gauge has it by the time the call's end reaches the client.
  sendSoon({ type: "kv-cells", ...loaded.kvCells() });
  sendSoon(end);
}

async function shutdown(): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  for (const controller of running.values()) controller.abort();
  await engine?.dispose();
  flushOutbox();
  process.exit(0);
}

send({ type: "ready", info: loaded.info });
