/**
 * Wiring: engine → scheduler → services → server, and the way down again in
 * reverse. `main.ts` adds signals and exit codes; tests start the same app
 * in-process on a free port.
 */
import type { AddressInfo } from "node:net";
import os from "node:os";
import type { Logger } from "pino";
import type { Config } from "./config.js";
import { EngineProcess } from "./engine/engine-client.js";
import { ServiceError } from "./errors.js";
import { GenerationService } from "./gen/airavata/v1/generation_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "./gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "./gen/grpc/reflection/v1alpha/reflection_pb.js";
import { ServiceMetrics } from "./metrics/prometheus.js";
import { Inference } from "./scheduling/inference.js";
import { SlotScheduler } from "./scheduling/slot-scheduler.js";
import { createGenerationService } from "./services/generation-service.js";
import { createHealthService, HealthRegistry, ServingStatus } from "./services/health.js";
import { createReflectionServices } from "./services/reflection.js";
import { createHttpHandler } from "./server/http-handler.js";
import { createOnePortServer } from "./server/one-port.js";

export interface App {
  readonly address: AddressInfo;
  readonly engine: EngineProcess;
  readonly health: HealthRegistry;
  /** Stops taking calls, lets running ones finish within the grace period, then closes everything. */
  shutdown(): Promise<void>;
}

export async function startApp(config: Readonly<Config>, log: Logger): Promise<App> {
  const health = new HealthRegistry([GenerationService.typeName]);
  let accepting = true;
  const shutdownController = new AbortController();

  // Set once the model is loaded; until then generation answers UNAVAILABLE.
  const loaded: { inference?: Inference; scheduler?: SlotScheduler } = {};
  const metrics = new ServiceMetrics({
    running: () => loaded.scheduler?.running ?? 0,
    waiting: () => loaded.scheduler?.waiting ?? 0,
    variant: () => config.modelId,
  });
  const reflection = createReflectionServices([GenerationService, Health]);
  const generation = createGenerationService({
    metrics,
    log,
    inference() {
      if (!accepting) throw new ServiceError("unavailable", "the server is shutting down; retry on another instance");
      if (!loaded.inference) throw new ServiceError("unavailable", "the model is still loading; retry shortly");
      return loaded.inference;
    },
  });
  const handler = createHttpHandler({
    corsOrigins: config.corsOrigins,
    maxMessageBytes: config.maxMessageBytes,
    shutdownSignal: shutdownController.signal,
    registry: metrics.registry,
    routes(router) {
      router.service(GenerationService, generation);
      router.service(Health, createHealthService(health));
      router.service(ReflectionV1, reflection.v1);
      router.service(ReflectionV1Alpha, reflection.v1alpha);
    },
  });

  // The server listens before the model loads, so health says NOT_SERVING meanwhile.
  if (config.threads > os.availableParallelism()) {
    log.warn(
      { threads: config.threads, cores: os.availableParallelism() },
      "more decode threads than cores: decoding will be many times slower (threads busy-wait for each other)",
    );
  }
  const server = createOnePortServer(handler, { tls: config.tls });
  const address = await server.listen(config.port, config.host);
  log.info({ host: address.address, port: address.port, tls: Boolean(config.tls) }, "listening");

  let engine: EngineProcess;
  try {
    engine = await EngineProcess.start(
      {
        modelPath: config.modelPath,
        gpu: config.gpu,
        threads: config.threads,
        contextSize: config.contextSize,
        sequences: config.parallel,
        batchSize: config.batchSize,
      },
      log,
    );
  } catch (error) {
    server.destroyAll();
    server.stopAccepting();
    throw error;
  }
  const info = engine.info;
  log.info(
    { model: config.modelPath, variant: config.modelId, ...info },
    info.backend === "cpu" ? "model loaded on CPU" : `model loaded on ${info.backend.toUpperCase()}`,
  );
  const scheduler = new SlotScheduler(info.sequences, config.maxQueue);
  loaded.scheduler = scheduler;
  loaded.inference = new Inference(engine, scheduler, config.modelId);
  engine.onExit((code, signal) => {
    if (accepting) {
      log.error({ code, signal }, "engine process exited; generation is unavailable");
      health.setAll(ServingStatus.NOT_SERVING);
    }
  });
  health.setAll(ServingStatus.SERVING);

  let shuttingDown: Promise<void> | undefined;
  return {
    address,
    engine,
    health,
    shutdown() {
      shuttingDown ??= (async () => {
        accepting = false;
        health.setAll(ServingStatus.NOT_SERVING);
        const deadline = Date.now() + config.gracePeriodMs;
        while ((scheduler.running > 0 || scheduler.waiting > 0) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
        }
        if (scheduler.running > 0 || scheduler.waiting > 0) {
          log.warn({ running: scheduler.running, waiting: scheduler.waiting }, "grace period over: ending the remaining calls");
        }
        shutdownController.abort(new ServiceError("unavailable", "the server is shutting down; retry on another instance"));
        // Let the aborted streams write their status and trailers.
        await new Promise((r) => setTimeout(r, 100));
        server.stopAccepting();
        server.destroyAll();
        await engine.dispose();
        log.info("stopped");
      })();
      return shuttingDown;
    },
  };
}
