/**
 * Entry point: configuration, logging, the app, and signals. SIGTERM/SIGINT
 * drain (health NOT_SERVING, new calls UNAVAILABLE, running streams finish
 * within the grace period) and exit 0.
 */
import { type App, startApp } from "./app.js";
import { loadConfig } from "./config.js";
import { createLogger } from "./log.js";

const config = loadConfig();
const log = createLogger(config.logLevel);

/** A one-line progress bar on a terminal; a log line every 10% otherwise. */
function downloadProgress() {
  let lastLogged = -10;
  return (id: string, { bytesDone, bytesTotal }: { bytesDone: number; bytesTotal: number }) => {
    const percent = bytesTotal > 0 ? (100 * bytesDone) / bytesTotal : 0;
    if (process.stderr.isTTY) {
      const width = 30;
      const filled = Math.round((percent / 100) * width);
      process.stderr.write(
        `\r${id} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${percent.toFixed(1)}% ` +
          `${(bytesDone / 1e9).toFixed(2)}/${(bytesTotal / 1e9).toFixed(2)} GB${percent >= 100 ? "\n" : ""}`,
      );
    } else if (percent - lastLogged >= 10) {
      lastLogged = percent;
      log.info({ variant: id, bytesDone, bytesTotal, percent: Math.round(percent) }, "downloading");
    }
  };
}

// A stop request during startup (a download of the variant can take long) ends the startup cleanly.
const startup = new AbortController();
let signals = 0;
let app: App | undefined;
let stoppedBy: NodeJS.Signals | undefined;
const shutDown = (running: App, signal: NodeJS.Signals) => {
  log.info({ signal, gracePeriodMs: config.gracePeriodMs }, "shutting down");
  running.shutdown().then(
    () => process.exit(0),
    (error: unknown) => {
      log.error({ err: error }, "shutdown failed");
      process.exit(1);
    },
  );
};
const onSignal = (signal: NodeJS.Signals) => {
  signals++;
  if (signals > 1) {
    log.warn({ signal }, "second signal: exiting now");
    process.exit(1);
  }
  if (!app) {
    log.info({ signal }, "stopping during startup");
    stoppedBy = signal;
    startup.abort();
    return;
  }
  shutDown(app, signal);
};
process.on("SIGTERM", onSignal);
process.on("SIGINT", onSignal);

try {
  app = await startApp(config, log, { onDownload: downloadProgress(), signal: startup.signal });
  // The stop came while the model loaded: start up, then shut down at once.
  if (stoppedBy) shutDown(app, stoppedBy);
} catch (error) {
  if (stoppedBy) {
    log.info({ reason: error instanceof Error ? error.message : String(error) }, "stopped during startup");
    process.exit(0);
  }
  const reason = error instanceof Error ? error.message : String(error);
  log.fatal({ err: error }, `could not start: ${reason}`);
  if ((error as NodeJS.ErrnoException).code === "EADDRINUSE") {
    process.stderr.write(
      `\nPort ${config.port} on ${config.host} is already in use (another airavata-serve?). ` +
        `Stop that process, or choose another port: --port or AIRAVATA_PORT (0 picks a free one).\n`,
    );
  } else if (!config.modelPath) {
    process.stderr.write(
      `\nNo variant could be served: ${reason}\n` +
        `To fix it, one of:\n` +
        `  - fetch it where there is internet: npm run pull -- ${config.variant}\n` +
        `    and copy the file it writes into ${config.modelsDir}/ on this machine;\n` +
        `  - serve a GGUF file you already have: npm start -- --model path/to/airavata.Q4_K_M.gguf\n` +
        `  - try the service without any weights: npm run demo\n`,
    );
  } else {
    process.stderr.write(`\nCould not serve ${config.modelPath}: ${reason}\n`);
  }
  process.exit(1);
}
