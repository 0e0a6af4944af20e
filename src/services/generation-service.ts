/**
 * GenerationService: validation, streaming and trailers. No engine detail
 * lives here; every Generate call ends with the metric trailers, on success,
 * error, cancellation and deadline alike.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, encodeBinaryHeader, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "pino";
import { type FinishReason as EngineFinishReason, finishReasonOf } from "../generation.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type GenerateResponseSchema,
  GenerationMetricsSchema,
  type GenerationService,
} from "../gen/airavata/v1/generation_pb.js";
import { type MetricsSnapshot, RequestMetrics } from "../metrics/request-metrics.js";
import type { ServiceMetrics } from "../metrics/prometheus.js";
import type { Inference } from "../scheduling/inference.js";
import type { Admission } from "../scheduling/serving-pool.js";
import { ServiceError } from "../errors.js";
import { fromConnectError, toConnectError } from "./connect-errors.js";
import { untilAborted } from "../util/until-aborted.js";
import { requestIdKey, roundTripKey } from "./request-id.js";
import { validateGenerateRequest } from "./validate.js";

/**
 * How far ahead of the client's deadline a call with one is ended, so that
 * DEADLINE_EXCEEDED and the metric trailers reach the client before its own
 * timer ends the call without them: the connection's round trip (the answer
 * must travel back; the request took its part of the client's time on the
 * way in), plus the larger of `floorMs` (time for the server's and the
 * client's processes to be scheduled: on the 2-core test machine, idle and
 * with a core kept busy, 10 ms lost 0–3% of the trailers at 20–100 ms
 * deadlines, 20 ms 0–1%, 30 ms 1 call in 1,200; `bench/results/deadline-margin*.md`)
 * and 10% of the call's time up to 100 ms (a longer call has more to stop).
 */
export function deadlineMarginMs(timeoutMs: number, floorMs: number, roundTripMs = 0): number {
  return roundTripMs + Math.max(floorMs, Math.min(100, timeoutMs * 0.1));
}

const FINISH: Record<EngineFinishReason, FinishReason> = {
  stop: FinishReason.STOP,
  length: FinishReason.LENGTH,
  stop_sequence: FinishReason.STOP_SEQUENCE,
  cancelled: FinishReason.CANCELLED,
  deadline: FinishReason.DEADLINE,
  error: FinishReason.ERROR,
};

export interface GenerationServiceDeps {
  /**
   * The inference a call goes to: the variant it names, or the routing
   * policy's choice (sticky by key); throws `unavailable` while there is none
   * or the server is shutting down, `not_found` / `failed_precondition` for a
   * named variant that is unknown / not loaded.
   */
  inference(want: Admission): Promise<Inference>;
  metrics: ServiceMetrics;
  log: Logger;
  /** The least a call with a deadline is ended ahead of it (`--deadline-margin`). */
  deadlineMarginMs: number;
}

function metricsMessage(m: MetricsSnapshot) {
  return create(GenerationMetricsSchema, {
    variant: m.variant,
    promptTokens: m.promptTokens,
    generatedTokens: m.generatedTokens,
    queueMs: m.queueMs,
    timeToFirstTokenMs: m.ttftMs,
    prefillMs: m.prefillMs,
    decodeTokensPerSecond: m.decodeTokensPerSecond,
    totalMs: m.totalMs,
    finishReason: FINISH[m.finishReason],
    cachedPromptTokens: m.cachedPromptTokens,
  });
}

/** Every Generate call's trailers (design §3), by name. */
function trailerValues(m: MetricsSnapshot): Record<(typeof METRIC_TRAILERS)[number], string> {
  return {
    "airavata-variant": m.variant,
    "airavata-prompt-tokens": String(m.promptTokens),
    "airavata-cached-prompt-tokens": String(m.cachedPromptTokens),
    "airavata-generated-tokens": String(m.generatedTokens),
    "airavata-queue-ms": m.queueMs.toFixed(2),
    "airavata-ttft-ms": m.ttftMs.toFixed(2),
    "airavata-prefill-ms": m.prefillMs.toFixed(2),
    "airavata-decode-tokens-per-second": m.decodeTokensPerSecond.toFixed(2),
    "airavata-total-ms": m.totalMs.toFixed(2),
    "airavata-finish-reason": m.finishReason,
    "airavata-metrics-bin": encodeBinaryHeader(metricsMessage(m), GenerationMetricsSchema),
  };
}

/** The names of the metric trailers, for CORS to expose. */
export const METRIC_TRAILERS = [
  "airavata-variant",
  "airavata-prompt-tokens",
  "airavata-cached-prompt-tokens",
  "airavata-generated-tokens",
  "airavata-queue-ms",
  "airavata-ttft-ms",
  "airavata-prefill-ms",
  "airavata-decode-tokens-per-second",
  "airavata-total-ms",
  "airavata-finish-reason",
  "airavata-metrics-bin",
] as const;

/** The response header that tells a queued call its place. */
export const QUEUE_POSITION_HEADER = "airavata-queue-position";

function writeTrailers(trailer: Headers, m: MetricsSnapshot): void {
  for (const [name, value] of Object.entries(trailerValues(m))) trailer.set(name, value);
}

/** The gRPC name of a code (CANCELLED, INVALID_ARGUMENT…), for logs and metric labels. */
export function grpcCodeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * What stopped a call whose signal fired, as a domain error: the server's
 * own deadline or shutdown (already one), Connect's cancel or deadline, or a
 * client that went away over HTTP/1.1 (a browser's Stop, a closed tab), which
 * aborts the handler with a plain socket error: a cancel, not an internal error.
 */
function stopCause(reason: unknown): ServiceError {
  if (reason instanceof ServiceError) return reason;
  if (reason instanceof ConnectError) return fromConnectError(reason);
  return new ServiceError("cancelled", "the client cancelled the call");
}

/**
 * The call's signal, firing on client cancel, server shutdown, and a little
 * before the client's deadline: ending the call ourselves just ahead of it is
 * what lets DEADLINE_EXCEEDED reach the client with the metric trailers,
 * rather than the client's own timer ending the call without them.
 */
function callSignal(ctx: HandlerContext, floorMs: number): { signal: AbortSignal; dispose(): void } {
  const deadline = new AbortController();
  const timeoutMs = ctx.timeoutMs();
  let timer: NodeJS.Timeout | undefined;
  if (timeoutMs !== undefined) {
    const margin = deadlineMarginMs(timeoutMs, floorMs, ctx.values.get(roundTripKey));
    if (margin >= timeoutMs) {
      // Too short to generate in and still answer in time: ended now, so the answer arrives first.
      deadline.abort(
        new ServiceError(
          "deadline_exceeded",
          `the deadline (${Math.round(timeoutMs)} ms left) is too short: a call is ended ${Math.round(margin)} ms ` +
            "before its deadline so that its status and metrics reach the client",
        ),
      );
    } else {
      timer = setTimeout(
        () => deadline.abort(new ServiceError("deadline_exceeded", "the deadline passed before the generation finished")),
        timeoutMs - margin,
      );
    }
  }
  return {
    signal: AbortSignal.any([ctx.signal, deadline.signal]),
    dispose: () => clearTimeout(timer),
  };
}

/** The request header whose value keeps a caller on one variant while the weights stay. */
export const ROUTING_KEY_HEADER = "airavata-routing-key";

function admission(variant: string, ctx: HandlerContext): Admission {
  return { variant: variant || undefined, routingKey: ctx.requestHeader.get(ROUTING_KEY_HEADER) ?? undefined };
}

export function createGenerationService(deps: GenerationServiceDeps): ServiceImpl<typeof GenerationService> {
  const { log } = deps;
  return {
    async *generate(req: GenerateRequest, ctx: HandlerContext): AsyncGenerator<MessageInitShape<typeof GenerateResponseSchema>> {
      const metrics = new RequestMetrics();
      const requestId = ctx.values.get(requestIdKey);
      ctx.responseHeader.set("x-request-id", requestId);
      const requestLog = log.child({ requestId, method: "Generate", protocol: ctx.protocolName });
      let code: string | undefined;
      const call = callSignal(ctx, deps.deadlineMarginMs);
      let sentQueueHeader = false;
      try {
        // Admitted first, so that a refused request counts in the metrics of the variant it was meant for.
        const inference = await deps.inference(admission(req.variant, ctx));
        metrics.variant = inference.variant;
        const { input, sampling } = validateGenerateRequest(req);
        // The call's signal ends the call at once, with the metrics as they stand: its deadline is
        // about to pass, or its client has gone. The engine's stop is confirmed in the background.
        for await (const event of untilAborted(inference.generate(input, sampling, call.signal, metrics), call.signal)) {
          if (event.type === "queued") {
            if (!sentQueueHeader) {
              ctx.responseHeader.set(QUEUE_POSITION_HEADER, String(event.position));
              sentQueueHeader = true;
            }
            yield { queuePosition: event.position };
            continue;
          }
          if (event.type === "text") {
            yield { text: event.text, tokenIds: event.tokens } satisfies Partial<GenerateResponse>;
            continue;
          }
          if (event.finishReason === "cancelled") {
            // The engine stopped the generation itself (it is shutting down): a call whose own signal
            // fired has ended already, in untilAborted. Tokens the engine held back (part of a
            // character, a possible stop string) still go out, so the tokens a client received add
            // up to the generated-tokens trailer.
            if (event.text !== "" || event.tokens.length > 0) yield { text: event.text, tokenIds: event.tokens };
            throw call.signal.aborted
              ? call.signal.reason
              : new ServiceError("cancelled", "the generation was stopped by the server");
          }
          metrics.end();
          code = "OK";
          yield {
            text: event.text,
            tokenIds: event.tokens,
            finishReason: FINISH[event.finishReason],
            metrics: metricsMessage(metrics.snapshot()),
          };
        }
      } catch (error) {
        const stopped = call.signal.aborted;
        const cause = stopped ? stopCause(call.signal.reason) : error;
        metrics.finishReason = finishReasonOf(cause, stopped);
        const connectError = toConnectError(cause, requestLog);
        code = grpcCodeName(connectError.code);
        throw connectError;
      } finally {
        if (code === undefined) {
          // The transport stopped the stream while it waited on a message (the client left).
          metrics.finishReason = finishReasonOf(call.signal.aborted ? stopCause(call.signal.reason) : undefined, true);
          code = metrics.finishReason === "deadline" ? "DEADLINE_EXCEEDED" : "CANCELLED";
        }
        call.dispose();
        metrics.end();
        const snapshot = metrics.snapshot();
        writeTrailers(ctx.responseTrailer, snapshot);
        deps.metrics.observe(snapshot, code);
        requestLog.info({ code, ...snapshot }, "generate finished");
      }
    },

    async tokenize(req, ctx) {
      try {
        const inference = await deps.inference(admission(req.variant, ctx));
        const tokens = await inference.tokenize(req.text, req.special);
        return { tokenIds: tokens, count: tokens.length, variant: inference.variant };
      } catch (error) {
        throw toConnectError(error, log.child({ requestId: ctx.values.get(requestIdKey), method: "Tokenize" }));
      }
    },
  };
}
