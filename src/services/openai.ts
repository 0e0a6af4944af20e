/**
 * The OpenAI-compatible surface (design §12): `POST /v1/chat/completions`,
 * `POST /v1/completions` (server-sent events with `stream`) and
 * `GET /v1/models`, on the same port, engine, slots, queue, cancellation and
 * metrics as `Generate`. A request is turned into a GenerateRequest and
 * validated by the same rules; errors leave in OpenAI's JSON shape with the
 * HTTP status its clients retry on.
 */
import type http from "node:http";
import type http2 from "node:http2";
import { create } from "@bufbuild/protobuf";
import type { Logger } from "pino";
import { type ErrorKind, ServiceError } from "../errors.js";
import { GenerateRequestSchema } from "../gen/airavata/v1/generation_pb.js";
import { type FinishReason, finishReasonOf } from "../generation.js";
import type { ServiceMetrics } from "../metrics/prometheus.js";
import { type MetricsSnapshot, RequestMetrics } from "../metrics/request-metrics.js";
import type { Inference } from "../scheduling/inference.js";
import type { Admission } from "../scheduling/serving-pool.js";
import { untilAborted } from "../util/until-aborted.js";
import { ROUTING_KEY_HEADER } from "./generation-service.js";
import { validateGenerateRequest } from "./validate.js";

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

/** The `model` that means "as the routing policy chooses" (also what a request without `model` gets). */
export const ROUTED_MODEL = "airavata";

export interface OpenAiDeps {
  admit(want: Admission): Promise<Inference>;
  /** The loaded variants' ids, for `GET /v1/models`. */
  loadedVariants(): string[];
  metrics: ServiceMetrics;
  log: Logger;
  maxBodyBytes: number;
  /** Fires when the server ends the calls left at shutdown. */
  shutdownSignal: AbortSignal;
  newRequestId(req: Req): string;
}

/** An error the client sees, in OpenAI's shape. */
class OpenAiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const STATUS: Record<ErrorKind, [number, string]> = {
  invalid_argument: [400, "invalid_request_error"],
  out_of_range: [400, "invalid_request_error"],
  resource_exhausted: [429, "rate_limit_error"],
  not_found: [404, "not_found_error"],
  unavailable: [503, "service_unavailable"],
  failed_precondition: [400, "invalid_request_error"],
  deadline_exceeded: [504, "timeout"],
  // Cancelled by the server (a swap, an unload): another try will be served.
  cancelled: [503, "service_unavailable"],
  internal: [500, "server_error"],
};

/** A domain error (or anything) as the client's error: an unexpected one is logged and leaves as a bare 500. */
function toOpenAiError(error: unknown, log: Logger, model: boolean): OpenAiError {
  if (error instanceof OpenAiError) return error;
  if (error instanceof ServiceError) {
    // A model that is unknown, or known but not loaded, is "not found" to an OpenAI client.
    if (model && (error.kind === "not_found" || error.kind === "failed_precondition")) {
      return new OpenAiError(404, error.message, "invalid_request_error", "model", "model_not_found");
    }
    const [status, type] = STATUS[error.kind];
    const headers: Record<string, string> = {};
    if (error.details.retryAfterMs !== undefined) headers["retry-after"] = String(Math.ceil(error.details.retryAfterMs / 1000));
    return new OpenAiError(status, error.message, type, null, null, headers);
  }
  log.error({ err: error }, "unexpected error");
  return new OpenAiError(500, "internal error", "server_error");
}

/** What an error found here (not a domain error) is, for the metrics. */
const KIND_OF_STATUS: Record<number, ErrorKind> = { 400: "invalid_argument", 404: "not_found", 413: "resource_exhausted" };

function errorBody(e: OpenAiError): string {
  return JSON.stringify({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
}

function sendJson(res: Res, status: number, body: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(body);
}

function bad(message: string, param: string): OpenAiError {
  return new OpenAiError(400, message, "invalid_request_error", param);
}

/** Reads the JSON body, refusing one over the limit with 413 before it is all read. */
async function readJson(req: Req, limit: number): Promise<Record<string, unknown>> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit)
    throw new OpenAiError(
      413,
      `the request body (${declared} bytes) is over the limit of ${limit} bytes`,
      "invalid_request_error",
    );
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new OpenAiError(413, `the request body is over the limit of ${limit} bytes`, "invalid_request_error");
    chunks.push(chunk);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch (error) {
    throw new OpenAiError(400, `the body is not JSON: ${(error as Error).message}`, "invalid_request_error");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw bad("the body must be a JSON object", "body");
  return body as Record<string, unknown>;
}

/** Field readers: a wrong type is a 400 naming the field; absent (or null) is undefined. */
const field = {
  number(body: Record<string, unknown>, name: string): number | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number") throw bad(`${name} must be a number, got ${JSON.stringify(v)}`, name);
    return v;
  },
  integer(body: Record<string, unknown>, name: string, min: number): number | undefined {
    const v = field.number(body, name);
    if (v === undefined) return undefined;
    if (!Number.isInteger(v) || v < min || v > 2 ** 32 - 1)
      throw bad(`${name} must be a whole number from ${min} up, got ${v}`, name);
    return v;
  },
  string(body: Record<string, unknown>, name: string): string | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") throw bad(`${name} must be a string, got ${JSON.stringify(v)}`, name);
    return v;
  },
  boolean(body: Record<string, unknown>, name: string): boolean | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") throw bad(`${name} must be true or false, got ${JSON.stringify(v)}`, name);
    return v;
  },
};

/** Fields OpenAI defines that this service does not do yet: refused, never silently ignored. */
const NOT_YET: Record<string, string> = {
  logprobs: "logprobs are not supported yet (they come with constrained output)",
  top_logprobs: "logprobs are not supported yet (they come with constrained output)",
  response_format: "response_format is not supported yet (it comes with constrained output)",
  tools: "tools are not supported",
  functions: "functions are not supported",
  suffix: "suffix is not supported",
  echo: "echo is not supported",
};

/** The parts of a request both endpoints share, turned into a GenerateRequest's fields. */
interface Parsed {
  model: string | undefined;
  stream: boolean;
  includeUsage: boolean;
  user: string | undefined;
  request: {
    maxNewTokens?: number;
    temperature?: number;
    topP?: number;
    seed?: number;
    stop: string[];
    topK?: number;
    minP?: number;
    repeatPenalty?: number;
  };
}

function parseCommon(body: Record<string, unknown>, kind: "chat" | "completions"): Parsed {
  for (const [name, why] of Object.entries(NOT_YET)) {
    const v = body[name];
    if (v !== undefined && v !== null && v !== false && !(Array.isArray(v) && v.length === 0)) throw bad(why, name);
  }
  const n = field.integer(body, "n", 1);
  if (n !== undefined && n !== 1) throw bad("n must be 1: one choice per request", "n");
  for (const name of ["frequency_penalty", "presence_penalty"]) {
    const v = field.number(body, name);
    if (v !== undefined && v !== 0) throw bad(`${name} is not supported; use repeat_penalty (llama.cpp's, ≥ 1)`, name);
  }
  const maxName = kind === "chat" && body.max_completion_tokens !== undefined ? "max_completion_tokens" : "max_tokens";
  let stop: string[] = [];
  const s = body.stop;
  if (typeof s === "string") stop = [s];
  else if (Array.isArray(s) && s.every((x) => typeof x === "string")) stop = s as string[];
  else if (s !== undefined && s !== null) throw bad("stop must be a string or a list of strings", "stop");
  const streamOptions = body.stream_options;
  if (
    streamOptions !== undefined &&
    streamOptions !== null &&
    (typeof streamOptions !== "object" || Array.isArray(streamOptions))
  ) {
    throw bad("stream_options must be an object", "stream_options");
  }
  const includeUsage = streamOptions ? field.boolean(streamOptions as Record<string, unknown>, "include_usage") : undefined;
  return {
    model: field.string(body, "model"),
    stream: field.boolean(body, "stream") ?? false,
    includeUsage: includeUsage ?? false,
    user: field.string(body, "user"),
    request: {
      maxNewTokens: field.integer(body, maxName, 0),
      temperature: field.number(body, "temperature"),
      topP: field.number(body, "top_p"),
      seed: field.integer(body, "seed", 0),
      stop,
      topK: field.integer(body, "top_k", 0),
      minP: field.number(body, "min_p"),
      repeatPenalty: field.number(body, "repeat_penalty"),
    },
  };
}

function chatMessages(body: Record<string, unknown>): { role: string; content: string }[] {
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw bad("messages must be a non-empty list", "messages");
  return messages.map((m: unknown, i) => {
    if (typeof m !== "object" || m === null) throw bad(`messages[${i}] must be an object`, `messages[${i}]`);
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== "string") throw bad(`messages[${i}].role must be a string`, `messages[${i}].role`);
    let text: string;
    if (typeof content === "string") text = content;
    else if (
      Array.isArray(content) &&
      content.every((p) => typeof p === "object" && p !== null && (p as { type?: unknown }).type === "text")
    ) {
      // Content parts: text only (this model reads no images).
      text = content.map((p: { text?: unknown }) => (typeof p.text === "string" ? p.text : "")).join("");
    } else throw bad(`messages[${i}].content must be a string or a list of text parts`, `messages[${i}].content`);
    return { role, content: text };
  });
}

function completionPrompt(body: Record<string, unknown>): string {
  const prompt = body.prompt;
  if (typeof prompt === "string") return prompt;
  if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === "string") return prompt[0];
  if (Array.isArray(prompt)) throw bad("prompt must be one string (a list of one at most): one completion per request", "prompt");
  throw bad("prompt must be a string", "prompt");
}

/** OpenAI's finish reasons: a stop string is a stop. */
function openAiFinish(reason: FinishReason): string {
  return reason === "length" ? "length" : reason === "stop" || reason === "stop_sequence" ? "stop" : reason;
}

/** The per-request metrics of design §3, as the extension object of the last chunk (or the response). */
function metricsExtension(m: MetricsSnapshot) {
  return {
    variant: m.variant,
    prompt_tokens: m.promptTokens,
    cached_prompt_tokens: m.cachedPromptTokens,
    generated_tokens: m.generatedTokens,
    queue_ms: m.queueMs,
    ttft_ms: m.ttftMs,
    prefill_ms: m.prefillMs,
    decode_tokens_per_second: m.decodeTokensPerSecond,
    total_ms: m.totalMs,
    finish_reason: m.finishReason,
  };
}

function usage(m: MetricsSnapshot) {
  return {
    prompt_tokens: m.promptTokens,
    completion_tokens: m.generatedTokens,
    total_tokens: m.promptTokens + m.generatedTokens,
    prompt_tokens_details: { cached_tokens: m.cachedPromptTokens },
  };
}

export function createOpenAiHandler(deps: OpenAiDeps): (req: Req, res: Res) => void {
  const models = (res: Res) => {
    const created = Math.floor(Date.now() / 1000);
    const data = [ROUTED_MODEL, ...deps.loadedVariants()].map((id) => ({
      id,
      object: "model",
      created,
      owned_by: "airavata-serve",
    }));
    sendJson(res, 200, JSON.stringify({ object: "list", data }));
  };

  async function complete(req: Req, res: Res, kind: "chat" | "completions"): Promise<void> {
    const requestId = deps.newRequestId(req);
    res.setHeader("x-request-id", requestId);
    const log = deps.log.child({ requestId, method: kind === "chat" ? "ChatCompletions" : "Completions", protocol: "openai" });
    const metrics = new RequestMetrics();
    // The client leaving (a closed connection, a reset stream) or the server's shutdown ends the call.
    const left = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) left.abort(new ServiceError("cancelled", "the client closed the connection"));
    };
    res.once("close", onClose);
    const signal = AbortSignal.any([left.signal, deps.shutdownSignal]);
    let code = "OK";
    let model = false;
    let sse = false;
    /** How this request names Generate's max_new_tokens, for the messages of the same rules. */
    let maxName = "max_tokens";
    try {
      const body = await readJson(req, deps.maxBodyBytes);
      const parsed = parseCommon(body, kind);
      const request = create(GenerateRequestSchema, {
        ...parsed.request,
        ...(kind === "chat" ? { messages: chatMessages(body) } : { prompt: completionPrompt(body), raw: true }),
      });
      model = true;
      const routed = parsed.model === undefined || parsed.model === ROUTED_MODEL;
      const key = req.headers[ROUTING_KEY_HEADER];
      const inference = await deps.admit({
        variant: routed ? undefined : parsed.model,
        routingKey: typeof key === "string" ? key : parsed.user,
      });
      model = false;
      metrics.variant = inference.variant;
      maxName = body.max_completion_tokens !== undefined ? "max_completion_tokens" : "max_tokens";
      const { input, sampling } = validateGenerateRequest(request);
      const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${requestId}`;
      const created = Math.floor(Date.now() / 1000);
      const object = kind === "chat" ? (parsed.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
      const base = { id, object, created, model: inference.variant };
      const chunkOf = (text: string, finish: string | null, first: boolean) =>
        kind === "chat"
          ? {
              ...base,
              choices: [
                { index: 0, delta: first ? { role: "assistant", content: text } : { content: text }, finish_reason: finish },
              ],
            }
          : { ...base, choices: [{ index: 0, text, finish_reason: finish, logprobs: null }] };
      const out = res as http.ServerResponse;
      const write = (value: unknown) => out.write(`data: ${JSON.stringify(value)}\n\n`);
      let text = "";
      let first = true;
      for await (const event of untilAborted(inference.generate(input, sampling, signal, metrics), signal)) {
        if (event.type === "queued") continue;
        if (parsed.stream && !sse) {
          sse = true;
          res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "x-request-id": requestId });
        }
        if (event.type === "text") {
          if (parsed.stream) write(chunkOf(event.text, null, first));
          else text += event.text;
          first = false;
          continue;
        }
        if (event.finishReason === "cancelled")
          throw signal.reason ?? new ServiceError("cancelled", "the generation was stopped by the server");
        metrics.end();
        const m = metrics.snapshot();
        const finish = openAiFinish(event.finishReason);
        if (parsed.stream) {
          write({ ...chunkOf(event.text, finish, first), airavata: metricsExtension(m) });
          if (parsed.includeUsage) write({ ...base, choices: [], usage: usage(m) });
          out.end("data: [DONE]\n\n");
        } else {
          text += event.text;
          const choice =
            kind === "chat"
              ? { index: 0, message: { role: "assistant", content: text }, finish_reason: finish, logprobs: null }
              : { index: 0, text, finish_reason: finish, logprobs: null };
          sendJson(res, 200, JSON.stringify({ ...base, choices: [choice], usage: usage(m), airavata: metricsExtension(m) }));
        }
      }
    } catch (error) {
      const stopped = signal.aborted;
      let cause: unknown = stopped ? (signal.reason ?? error) : error;
      if (cause instanceof ServiceError && cause.message.includes("max_new_tokens")) {
        cause = new ServiceError(cause.kind, cause.message.replace(/\bmax_new_tokens\b/g, maxName), cause.details);
      }
      metrics.finishReason = finishReasonOf(cause, stopped);
      // A stop's reason is a ServiceError here (the closed connection's, the shutdown's).
      const e = toOpenAiError(cause, log, model);
      // The metrics' code, by gRPC's names as for Generate (the api label tells the surfaces apart).
      code = left.signal.aborted
        ? "CANCELLED"
        : (cause instanceof ServiceError ? cause.kind : (KIND_OF_STATUS[e.status] ?? "internal")).toUpperCase();
      if (sse) {
        // Headers are gone: the error goes as one more event, then the stream ends.
        if (!res.writableEnded && !left.signal.aborted) (res as http.ServerResponse).end(`data: ${errorBody(e)}\n\n`);
      } else if (!left.signal.aborted) {
        sendJson(res, e.status, errorBody(e), e.headers);
      }
    } finally {
      res.off("close", onClose);
      metrics.end();
      const snapshot = metrics.snapshot();
      deps.metrics.observe(snapshot, code, "openai");
      log.info({ code, ...snapshot }, "completion finished");
    }
  }

  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const route = (kind: "chat" | "completions") => {
      if (req.method !== "POST") {
        sendJson(res, 405, errorBody(new OpenAiError(405, `${path} takes POST`, "invalid_request_error")), { allow: "POST" });
        return;
      }
      void complete(req, res, kind);
    };
    if (path === "/v1/chat/completions") return route("chat");
    if (path === "/v1/completions") return route("completions");
    if (path === "/v1/models" && req.method === "GET") return models(res);
    sendJson(res, 404, errorBody(new OpenAiError(404, `no such endpoint: ${req.method} ${path}`, "invalid_request_error")));
  };
}
