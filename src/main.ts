/**
 * Entry point: configuration, logging, the app, and signals. SIGTERM/SIGINT
 * drain (health NOT_SERVING, new calls UNAVAILABLE, running streams finish
 * within the grace period) and exit 0.
 */
import { startApp } from "./app.js";
import { loadConfig } from "./config.js";
import { createLogger } from "./log.js";

const config = loadConfig();
const log = createLogger(config.logLevel);

try {
  const app = await startApp(config, log);
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    log.info({ signal, gracePeriodMs: config.gracePeriodMs }, "shutting down");
    app.shutdown().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
} catch (error) {
  log.fatal({ err: error }, `could not start: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
