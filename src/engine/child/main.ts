/**
 * Entry of an engine process (a child of the server). It loads one model and
 * serves the server's messages over IPC. It runs with UV_THREADPOOL_SIZE=1,
 * set by the parent before Node starts: node-llama-cpp decodes on the libuv
 * pool, and one pool thread keeps its decodes on one thread.
 */
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
        started: (promptTokens) => send({ type: "started", id, promptTokens }),
        chunk: ({ text, tokens }, progress) => send({ type: "chunk", id, text, tokens, ...progress, sentAt: sharedClockMs() }),
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
  send({ type: "kv-cells", ...loaded.kvCells() });
  send(end);
}

async function shutdown(): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  for (const controller of running.values()) controller.abort();
  await engine?.dispose();
  process.exit(0);
}

send({ type: "ready", info: loaded.info });
