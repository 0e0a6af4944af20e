/**
 * Entry of an engine process (a child of the server). It loads one model and
 * serves the server's messages over IPC. It runs with UV_THREADPOOL_SIZE=1,
 * set by the parent before Node starts: node-llama-cpp decodes on the libuv
 * pool, and one pool thread keeps its decodes on one thread.
 */
import { LlamaEngine } from "./llama-engine.js";
import type { EngineOptions, FromEngine, ToEngine } from "./protocol.js";
import { ServiceError } from "../errors.js";

function send(message: FromEngine): void {
  process.send?.(message);
}

const options = JSON.parse(process.argv[2] ?? "{}") as EngineOptions;
const running = new Map<number, AbortController>();

let engine: LlamaEngine;
try {
  engine = await LlamaEngine.load(options, (progress) => send({ type: "load-progress", progress }));
} catch (error) {
  send({ type: "load-failed", message: error instanceof Error ? error.message : String(error) });
  process.exit(1);
}

process.on("message", (message: ToEngine) => {
  switch (message.type) {
    case "generate":
      void generate(message);
      break;
    case "cancel":
      running.get(message.id)?.abort();
      break;
    case "tokenize":
      try {
        send({ type: "tokenized", id: message.id, tokens: engine.tokenize(message.text, message.special) });
      } catch (error) {
        send({ type: "failed", id: message.id, kind: "internal", message: String(error) });
      }
      break;
    case "memory":
      engine.memory().then(
        (memory) => send({ type: "memory", id: message.id, memory }),
        (error: unknown) => send({ type: "failed", id: message.id, kind: "internal", message: String(error) }),
      );
      break;
    case "estimate":
      engine.estimate(message.modelPath).then(
        (estimate) => send({ type: "estimate", id: message.id, estimate }),
        (error: unknown) => send({ type: "failed", id: message.id, kind: "failed_precondition", message: String(error) }),
      );
      break;
    case "perplexity":
      engine.perplexity(message.text, message.maxTokens).then(
        (r) => send({ type: "perplexity", id: message.id, ...r }),
        (error: unknown) =>
          send({
            type: "failed",
            id: message.id,
            kind: error instanceof ServiceError ? error.kind : "internal",
            message: error instanceof Error ? error.message : String(error),
          }),
      );
      break;
    case "shutdown":
      void shutdown();
      break;
  }
});
process.on("disconnect", () => void shutdown());

async function generate(message: Extract<ToEngine, { type: "generate" }>): Promise<void> {
  const { id } = message;
  const controller = new AbortController();
  running.set(id, controller);
  try {
    const result = await engine.generate(message.slot, message.input, message.sampling, controller.signal, {
      started: (promptTokens) => send({ type: "started", id, promptTokens }),
      chunk: ({ text, tokens }) => send({ type: "chunk", id, text, tokens }),
    });
    send({ type: "done", id, ...result });
  } catch (error) {
    if (error instanceof ServiceError) {
      send({ type: "failed", id, kind: error.kind, message: error.message });
    } else {
      send({
        type: "failed",
        id,
        kind: "internal",
        message: error instanceof Error ? (error.stack ?? error.message) : String(error),
      });
    }
  } finally {
    running.delete(id);
  }
}

let shuttingDown = false;
async function shutdown(): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  for (const controller of running.values()) controller.abort();
  await engine.dispose();
  process.exit(0);
}

send({ type: "ready", info: engine.info });
