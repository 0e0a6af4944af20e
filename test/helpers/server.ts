/**
 * Starting the service for a test: in-process (the app on a free port, real
 * engine process, real sockets) or as a real `node src/main.ts` process.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type App, startApp } from "../../src/app.js";
import type { Config } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { EVERY_TOKEN } from "../../src/generation.js";
import { MODEL_DIR, modelPath } from "./models.js";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    modelPath: modelPath("q4_0"),
    variant: "q4_k_m",
    fallback: [],
    variants: undefined,
    modelsDir: MODEL_DIR,
    manifestPath: undefined,
    adminToken: undefined,
    memoryBudget: undefined,
    host: "127.0.0.1",
    port: 0,
    gpu: "cpu",
    threads: 1,
    contextSize: 512,
    parallel: 2,
    batchSize: 512,
    batching: "measured",
    streamInterval: EVERY_TOKEN,
    prefixCache: true,
    flashAttention: "auto",
    threadPool: "persistent",
    vllmMetrics: true,
    maxQueue: 8,
    maxMessageBytes: 64 * 1024,
    tls: undefined,
    corsOrigins: [],
    gracePeriodMs: 5000,
    deadlineMarginMs: 30,
    maxStreamsPerConnection: 100,
    maxConnections: 1024,
    maxConnectionsPerClient: 256,
    idleTimeoutMs: 300_000,
    headersTimeoutMs: 30_000,
    engineWatchdogMs: 15_000,
    engineMaxRestarts: 5,
    logLevel: "silent",
    ...overrides,
  };
}

export interface TestServer {
  app: App;
  /** host:port, for grpc-js. */
  address: string;
  /** http://host:port, for Connect transports and buf curl. */
  baseUrl: string;
}

export async function startTestServer(overrides: Partial<Config> = {}): Promise<TestServer> {
  const config = testConfig(overrides);
  const app = await startApp(config, createLogger(config.logLevel));
  const address = `127.0.0.1:${app.address.port}`;
  return { app, address, baseUrl: `http://${address}` };
}

export interface ServerProcess {
  child: ChildProcess;
  port: number;
  /** Every JSON log line so far. */
  logs: Record<string, unknown>[];
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
}

/** Runs `node --import tsx src/main.ts ...args` and resolves once it listens. */
export function startServerProcess(args: string[], env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "--port", "0", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += String(d)));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        if (entry.msg === "listening") resolve({ child, port: entry.port as number, logs, exited });
      } catch {
        // not a log line
      }
    });
    void exited.then((code) => reject(new Error(`server exited with ${code} before listening: ${stderr}`)));
  });
}
