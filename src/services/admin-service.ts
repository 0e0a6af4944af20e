/**
 * AdminService: list the variants, report status, load, unload, route and
 * swap with streamed progress. Thin: the serving pool does the work.
 */
import os from "node:os";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "pino";
import {
  type AdminService,
  type EvaluateResultSchema,
  SwapPhase,
  SwapPolicy,
  type SwapProgressSchema,
  type VariantSchema,
} from "../gen/airavata/v1/admin_pb.js";
import { isUp, type Serving, type ServingPool, type SwapEvent, type SwapPhaseName } from "../scheduling/serving-pool.js";
import type { VariantView } from "../variants/variant-loader.js";
import { invalidArgument } from "../errors.js";
import { defaultEvaluationText } from "../variants/evaluate.js";
import { createAdminCheck } from "./admin-auth.js";
import { toConnectError } from "./connect-errors.js";
import { AsyncQueue } from "../util/async-queue.js";

const PHASES: Record<SwapPhaseName, SwapPhase> = {
  checking: SwapPhase.CHECKING,
  downloading: SwapPhase.DOWNLOADING,
  loading: SwapPhase.LOADING,
  warming: SwapPhase.WARMING,
  switched: SwapPhase.SWITCHED,
  draining: SwapPhase.DRAINING,
  released: SwapPhase.RELEASED,
  done: SwapPhase.DONE,
};

export const DEFAULT_DRAIN_TIMEOUT_MS = 60_000;

export interface AdminServiceDeps {
  pool: ServingPool;
  adminToken: string | undefined;
  log: Logger;
  version: string;
  startedAt: number;
  /** Called after every swap attempt, with its result. */
  onSwap?(result: "ok" | "failed", variant: string): void;
  /** Out of (or, with `resume`, back into) a balancer's rotation: health only, calls are still served. */
  drain(resume: boolean): void;
  /** Whether the replica is drained. */
  draining(): boolean;
}

function variantMessage(v: VariantView): MessageInitShape<typeof VariantSchema> {
  const s = v.summary;
  return {
    id: v.entry.id,
    source: v.entry.origin === "folder" || v.entry.origin === "command-line" ? v.entry.path : v.entry.source,
    description: v.entry.description,
    sha256: v.entry.sha256 ?? "",
    downloaded: v.downloaded,
    loaded: v.loaded,
    active: v.active,
    usable: s === undefined ? true : s.usable,
    unusableReason: s !== undefined && !s.usable ? s.reason : "",
    fileSizeBytes: BigInt(s?.fileSize ?? 0),
    ...(s?.usable ? { quantization: s.quantization, parameterCount: BigInt(s.parameters), bitsPerWeight: s.bitsPerWeight } : {}),
  };
}

/**
 * Streams what `run` emits as it emits it, then ends with `run`'s error, if
 * any. `run` is given the call's signal and decides itself what a cancel
 * stops: an evaluation stops at once, a swap before its switch.
 */
async function* streamOf<T>(run: (emit: (value: T) => void) => Promise<void>, log: Logger): AsyncGenerator<T> {
  const queue = new AsyncQueue<T>();
  run((value) => queue.push(value)).then(
    () => queue.end(),
    (error: unknown) => queue.fail(error),
  );
  try {
    yield* queue;
  } catch (error) {
    throw toConnectError(error, log);
  }
}

/** A pool event as the SwapProgress message that LoadVariant, UnloadVariant and SwapVariant stream. */
function progressOf(
  variantId: string,
  started: number,
  emit: (message: MessageInitShape<typeof SwapProgressSchema>) => void,
): (event: SwapEvent) => void {
  return (event) =>
    emit({
      phase: PHASES[event.phase],
      variantId,
      bytesDone: BigInt(event.bytesDone ?? 0),
      bytesTotal: BigInt(event.bytesTotal ?? 0),
      percent: event.percent ?? 0,
      inFlight: event.inFlight ?? 0,
      message: event.message ?? "",
      elapsedMs: performance.now() - started,
    });
}

export function createAdminService(deps: AdminServiceDeps): ServiceImpl<typeof AdminService> {
  const { pool, log } = deps;
  const check = createAdminCheck(deps.adminToken);
  const guard = async <T>(ctx: HandlerContext, method: string, body: () => Promise<T>): Promise<T> => {
    check(ctx);
    try {
      return await body();
    } catch (error) {
      throw toConnectError(error, log.child({ method }));
    }
  };
  return {
    listVariants(_req, ctx) {
      return guard(ctx, "ListVariants", async () => ({ variants: (await pool.list()).map(variantMessage) }));
    },

    getStatus(_req, ctx) {
      return guard(ctx, "GetStatus", async () => {
        const serving = pool.current;
        const memory = serving ? await serving.engine.memory().catch(() => undefined) : undefined;
        const loaded = pool.loaded;
        const total = (count: (s: Serving) => number) => loaded.reduce((n, m) => n + (m.serving ? count(m.serving) : 0), 0);
        return {
          activeVariant: serving?.entry.id ?? "",
          backend: serving?.engine.info.backend ?? "",
          devices: serving?.engine.info.devices ?? [],
          ramTotalBytes: BigInt(os.totalmem()),
          ramFreeBytes: BigInt(os.freemem()),
          vramTotalBytes: BigInt(memory?.vramTotal ?? 0),
          vramFreeBytes: BigInt(memory?.vramFree ?? 0),
          parallelSlots: serving?.engine.info.sequences ?? 0,
          running: total((s) => s.scheduler.running),
          queued: total((s) => s.scheduler.waiting),
          uptimeSeconds: (Date.now() - deps.startedAt) / 1000,
          version: deps.version,
          contextSize: serving?.engine.info.contextSize ?? 0,
          threads: serving?.engine.info.threads ?? 0,
          startupNotes: pool.startupNotes,
          swappingTo: pool.swapInProgress ?? "",
          draining: deps.draining(),
          loadedVariants: loaded.map((m) => ({
            variantId: m.id,
            quantization: m.summary.quantization,
            weight: m.weight,
            calls: BigInt(m.calls),
            running: m.serving?.scheduler.running ?? 0,
            queued: m.serving?.scheduler.waiting ?? 0,
            serving: isUp(m),
          })),
        };
      });
    },

    async *evaluate(req, ctx): AsyncGenerator<MessageInitShape<typeof EvaluateResultSchema>> {
      check(ctx);
      const maxTokens = req.maxTokens ?? 512;
      const generateTokens = req.generateTokens ?? 64;
      if (maxTokens < 2 || maxTokens > 8192) throw toConnectError(invalidArgument("max_tokens must be from 2 to 8192"), log);
      if (generateTokens < 2 || generateTokens > 4096)
        throw toConnectError(invalidArgument("generate_tokens must be from 2 to 4096"), log);
      const text = req.text || defaultEvaluationText();
      yield* streamOf<MessageInitShape<typeof EvaluateResultSchema>>(
        (emit) =>
          pool.evaluate(
            req.variantIds,
            { text, maxTokens, generateTokens },
            (r) =>
              emit({
                ...r,
                fileSizeBytes: BigInt(r.fileSizeBytes),
                parameterCount: BigInt(r.parameterCount),
                ramBytes: BigInt(r.ramBytes),
                vramBytes: BigInt(r.vramBytes),
                error: r.error ?? "",
              }),
            ctx.signal,
          ),
        log,
      );
    },

    async *loadVariant(req, ctx): AsyncGenerator<MessageInitShape<typeof SwapProgressSchema>> {
      check(ctx);
      const started = performance.now();
      log.info({ variant: req.variantId }, "load requested");
      yield* streamOf<MessageInitShape<typeof SwapProgressSchema>>(
        (emit) => pool.load(req.variantId, progressOf(req.variantId, started, emit), ctx.signal),
        log,
      );
    },

    async *unloadVariant(req, ctx): AsyncGenerator<MessageInitShape<typeof SwapProgressSchema>> {
      check(ctx);
      const started = performance.now();
      log.info({ variant: req.variantId, policy: SwapPolicy[req.policy] }, "unload requested");
      yield* streamOf<MessageInitShape<typeof SwapProgressSchema>>(
        (emit) =>
          pool.unload(
            {
              id: req.variantId,
              policy: req.policy === SwapPolicy.CANCEL ? "cancel" : "drain",
              drainTimeoutMs: req.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS,
            },
            progressOf(req.variantId, started, emit),
          ),
        log,
      );
    },

    drain(req, ctx) {
      return guard(ctx, "Drain", async () => {
        deps.drain(req.resume);
        log.info({ resume: req.resume, inFlight: pool.inFlight }, req.resume ? "back in rotation" : "drained");
        return { draining: deps.draining(), inFlight: pool.inFlight };
      });
    },

    setRouting(req, ctx) {
      return guard(ctx, "SetRouting", async () => ({ weights: pool.setRouting(req.weights) }));
    },

    async *swapVariant(req, ctx): AsyncGenerator<MessageInitShape<typeof SwapProgressSchema>> {
      check(ctx);
      const started = performance.now();
      log.info({ variant: req.variantId, policy: SwapPolicy[req.policy] }, "swap requested");
      yield* streamOf<MessageInitShape<typeof SwapProgressSchema>>(async (emit) => {
        try {
          await pool.swap(
            {
              id: req.variantId,
              policy: req.policy === SwapPolicy.CANCEL ? "cancel" : "drain",
              drainTimeoutMs: req.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS,
              allowDowntime: req.allowDowntime,
            },
            progressOf(req.variantId, started, emit),
            ctx.signal,
          );
          deps.onSwap?.("ok", req.variantId);
        } catch (error) {
          deps.onSwap?.("failed", req.variantId);
          log.warn({ variant: req.variantId, err: error }, "swap failed");
          throw error;
        }
      }, log);
    },
  };
}
