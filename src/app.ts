/**
 * Wiring: variants (the loader) → scheduling (the serving pool) → services →
 * server, and the way down again in reverse. `main.ts` adds signals and exit codes; tests start
 * the same app in-process on a free port.
 */
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import type { Config } from "./config.js";
import { nvidiaDriverLoaded } from "./engine/cuda-libraries.js";
import { ServiceError } from "./errors.js";
import { AdminService } from "./gen/airavata/v1/admin_pb.js";
import { GenerationService } from "./gen/airavata/v1/generation_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "./gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "./gen/grpc/reflection/v1alpha/reflection_pb.js";
import { ServiceMetrics } from "./metrics/prometheus.js";
import { createAdminService } from "./services/admin-service.js";
import { createGenerationService } from "./services/generation-service.js";
import { createHealthService, HealthRegistry, ServingStatus } from "./services/health.js";
import { createOpenAiHandler } from "./services/openai.js";
import { createReflectionServices } from "./services/reflection.js";
import { requestContextValues, requestIdKey } from "./services/request-id.js";
import { createHttpHandler } from "./server/http-handler.js";
import { createOnePortServer } from "./server/one-port.js";
import { isUp, ServingPool } from "./scheduling/serving-pool.js";
import { idForFile } from "./variants/catalog.js";
import { VariantLoader } from "./variants/variant-loader.js";

/** Where `npm run build:web` puts the browser playground. */
const WEB_ROOT = fileURLToPath(new URL("../clients/web/dist", import.meta.url));

/** How long calls ended at shutdown get to send their status and trailers before their connections are cut. */
const ENDED_CALLS_MS = 2_000;

/** The health name of one loaded variant: up while its engine is (design §10). */
export function variantHealthName(id: string): string {
  return `${GenerationService.typeName}/${id}`;
}

export const VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string })
  .version;

export interface App {
  readonly address: AddressInfo;
  readonly pool: ServingPool;
  readonly health: HealthRegistry;
  /** Stops taking calls, lets running ones finish within the grace period, then closes everything. */
  shutdown(): Promise<void>;
}

export interface StartOptions {
  /** Download progress of a variant fetched at startup. */
  onDownload?(id: string, progress: { bytesDone: number; bytesTotal: number }): void;
  /** Aborted by a stop request during startup: a download in progress ends and removes its partial file. */
  signal?: AbortSignal;
}

export async function startApp(config: Readonly<Config>, log: Logger, options: StartOptions = {}): Promise<App> {
  const startedAt = Date.now();
  const health = new HealthRegistry([GenerationService.typeName, AdminService.typeName]);
  const shutdownController = new AbortController();
  // Every running call listens on it (connect-node links each call's signal to it): many are normal, not a leak.
  setMaxListeners(0, shutdownController.signal);

  const loader = new VariantLoader({
    catalog: { modelsDir: config.modelsDir, manifestPath: config.manifestPath, extraFile: config.modelPath },
    engine: {
      gpu: config.gpu,
      threads: config.threads,
      contextSize: config.contextSize,
      sequences: config.parallel,
      batchSize: config.batchSize,
      batching: config.batching,
      streamInterval: config.streamInterval,
      prefixCache: config.prefixCache,
      flashAttention: config.flashAttention,
      threadPool: config.threadPool,
    },
    memoryBudget: config.memoryBudget,
    log,
  });
  let stopping = false;
  /** Drained by the admin Drain call: health NOT_SERVING, calls still served. */
  let draining = false;
  const pool = new ServingPool({
    loader,
    maxQueue: config.maxQueue,
    log,
    engineWatchdogMs: config.engineWatchdogMs,
    maxRestarts: config.engineMaxRestarts,
    onEngineEvent: (variant, event) => metrics.countEngineEvent(variant, event),
    onChange: () => refreshHealth(),
  });
  /** Health and the active-variant gauge, from what the pool serves (and whether this replica is drained). */
  function refreshHealth(): void {
    if (stopping) return;
    // SERVING while any variant the policy routes to is up; each loaded variant has a name of its own.
    const routedUp = pool.loaded.some((m) => m.weight > 0 && isUp(m));
    health.setAll(routedUp && !draining ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
    health.setExtra(
      Object.fromEntries(
        pool.loaded.map((m) => [variantHealthName(m.id), isUp(m) ? ServingStatus.SERVING : ServingStatus.NOT_SERVING]),
      ),
    );
    metrics.setActiveVariants(
      pool.loaded.filter((m) => m.weight > 0).map((m) => ({ variant: m.id, quantization: m.summary.quantization })),
    );
  }
  const metrics = new ServiceMetrics(
    () =>
      pool.loaded.map((m) => ({
        variant: m.id,
        running: m.serving?.scheduler.running ?? 0,
        waiting: m.serving?.scheduler.waiting ?? 0,
        weight: m.weight,
        kvCells: m.serving?.engine.kvCells ?? { used: 0, total: 0 },
      })),
    config.vllmMetrics,
  );
  const reflection = createReflectionServices([GenerationService, AdminService, Health]);
  const generation = createGenerationService({
    metrics,
    log,
    deadlineMarginMs: config.deadlineMarginMs,
    inference: (want) => pool.admit(want),
  });
  const admin = createAdminService({
    pool,
    adminToken: config.adminToken,
    log,
    version: VERSION,
    startedAt,
    onSwap: (result) => metrics.countSwap(result),
    drain(resume) {
      draining = !resume;
      refreshHealth();
    },
    draining: () => draining,
  });
  const handler = createHttpHandler({
    corsOrigins: config.corsOrigins,
    maxMessageBytes: config.maxMessageBytes,
    shutdownSignal: shutdownController.signal,
    registry: metrics.registry,
    webRoot: WEB_ROOT,
    openai: createOpenAiHandler({
      admit: (want) => pool.admit(want),
      loadedVariants: () => pool.loaded.map((m) => m.id),
      metrics,
      log,
      maxBodyBytes: config.maxMessageBytes,
      shutdownSignal: shutdownController.signal,
      newRequestId: (req) => requestContextValues(req.headers).get(requestIdKey),
    }),
    routes(router) {
      router.service(GenerationService, generation);
      router.service(AdminService, admin);
      router.service(Health, createHealthService(health));
      router.service(ReflectionV1, reflection.v1);
      router.service(ReflectionV1Alpha, reflection.v1alpha);
    },
  });

  const cores = os.availableParallelism();
  if (config.threads !== "auto" && config.threads > cores) {
    log.warn(
      { threads: config.threads, cores },
      "more decode threads than cores: decoding will be many times slower (threads busy-wait for each other)",
    );
  } else if (config.threads === cores && cores > 1) {
    // Measured on 2 cores: one stream at 0.30–0.37× llama-server's speed with 2 threads, 0.91–0.93× with 1.
    log.warn(
      { threads: config.threads, cores },
      "as many decode threads as cores: the server process's work at every token takes a core from a decode " +
        "thread, and the others busy-wait for it; on the CPU the default (cores less one) is faster",
    );
  }
  // The server listens before the model loads, so health says NOT_SERVING meanwhile.
  const server = createOnePortServer(handler, {
    tls: config.tls,
    maxStreamsPerConnection: config.maxStreamsPerConnection,
    maxConnections: config.maxConnections,
    maxConnectionsPerClient: config.maxConnectionsPerClient,
    idleTimeoutMs: config.idleTimeoutMs,
    headersTimeoutMs: config.headersTimeoutMs,
  });
  const address = await server.listen(config.port, config.host);
  log.info(
    { host: address.address, port: address.port, tls: Boolean(config.tls), admin: Boolean(config.adminToken) },
    "listening",
  );

  const variants = config.modelPath
    ? [{ id: idForFile(config.modelPath), weight: 100 }]
    : (config.variants ?? [{ id: config.variant, weight: 100 }]);
  const stopStartup = () => pool.stopDownloads();
  options.signal?.addEventListener("abort", stopStartup, { once: true });
  try {
    if (options.signal?.aborted) stopStartup();
    await pool.start(variants, config.modelPath ? [] : config.fallback, options.onDownload);
  } catch (error) {
    server.destroyAll();
    server.stopAccepting();
    throw error;
  } finally {
    options.signal?.removeEventListener("abort", stopStartup);
  }
  for (const { serving, weight } of pool.loaded) {
    if (!serving) continue;
    const info = serving.engine.info;
    const fields = {
      variant: serving.entry.id,
      model: serving.entry.path,
      quantization: serving.summary.quantization,
      weight,
      ...info,
    };
    if (info.backend !== "cpu") {
      log.info(fields, `model loaded on ${info.backend.toUpperCase()}`);
    } else if (config.gpu === "auto" && nvidiaDriverLoaded()) {
      // A GPU is there and idle: say so louder than a CPU machine's normal start.
      log.warn(fields, `model loaded on CPU although an NVIDIA driver is loaded: ${info.cpuReason ?? "no usable GPU backend"}`);
    } else {
      log.info(fields, "model loaded on CPU");
    }
  }

  let shuttingDown: Promise<void> | undefined;
  return {
    address,
    pool,
    health,
    shutdown() {
      shuttingDown ??= (async () => {
        stopping = true;
        pool.stopAdmitting();
        health.setAll(ServingStatus.NOT_SERVING);
        pool.stopDownloads();
        // Running calls, and a swap in progress (a running call too), may finish in the grace period.
        const settled = await pool.settle(config.gracePeriodMs);
        if (!settled) {
          log.warn({ inFlight: pool.inFlight, swappingTo: pool.swapInProgress }, "grace period over: ending the remaining calls");
        }
        // Ends what is left: generations past the grace period, health watches.
        shutdownController.abort(new ServiceError("unavailable", "the server is shutting down; retry on another instance"));
        // An ended generation stops its engine within a token or so.
        if (!settled) await pool.settle(ENDED_CALLS_MS);
        // Connections close once their last stream has sent its status and trailers.
        await server.close(ENDED_CALLS_MS);
        await pool.dispose();
        log.info("stopped");
      })();
      return shuttingDown;
    },
  };
}
