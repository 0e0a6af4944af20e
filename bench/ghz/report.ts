/**
 * ghz runs as the bench uses them: the project's configs (bench/ghz/*.json),
 * one count-bounded run per concurrency level, and the summary of ghz's JSON
 * report (latencies in nanoseconds) as milliseconds and calls/s, with the
 * statuses the server answered kept apart from the errors ghz's own client
 * made up (a call it cut when it closed its connection, its own timer).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const CONFIG_DIR = fileURLToPath(new URL(".", import.meta.url));

/**
 * The keys of a ghz config file that the project's configs use. No
 * `duration` or `max-duration`: either makes a run timed, and ghz then
 * ignores `total` (seen with ghz 0.121.0: `total` 2000 with a time bound made
 * 57,730 calls) and reports the calls still open at the bound as errors. The
 * bench bounds a run's time by stopping ghz instead (`--level-timeout`).
 */
export interface GhzConfig {
  name: string;
  call: string;
  host: string;
  insecure: boolean;
  /** The run's number of calls: ghz stops when they are all made. */
  total: number;
  concurrency: number;
  /** Each call's deadline. */
  timeout: string;
  data: Record<string, unknown>;
}

export function loadConfigs(dir = CONFIG_DIR): { file: string; config: GhzConfig }[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => ({ file, config: JSON.parse(readFileSync(join(dir, file), "utf8")) as GhzConfig }));
}

/** One run's config: the file's, at `concurrency`, with at least 4 calls per worker, against `host`. */
export function runConfig(config: GhzConfig, concurrency: number, host: string): GhzConfig & { format: "json" } {
  return { ...config, host, concurrency, total: Math.max(config.total, concurrency * 4), format: "json" };
}

/** The part of ghz's JSON report the summary reads. */
export interface GhzReport {
  /** "normal" (every call made), "cancel" (ghz was interrupted), "timeout" (a timed run's end). */
  endReason?: string;
  count: number;
  total: number;
  rps: number;
  latencyDistribution: { percentage: number; latency: number }[] | null;
  statusCodeDistribution?: Record<string, number> | null;
  errorDistribution?: Record<string, number> | null;
}

export interface RunSummary {
  calls: number;
  /** Why ghz stopped: "normal" when it made every call; "cancel" when the bench stopped it at its time bound. */
  endReason: string;
  callsPerSecond: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  /** What the server answered, by status (OK included). */
  statuses: Record<string, number>;
  /** Calls the server did not end: errors made by ghz's own gRPC client, by message. */
  clientErrors: Record<string, number>;
}

/**
 * Messages grpc-go makes up itself rather than reads from the server's
 * `grpc-message`: its own deadline or cancel, a connection it closed or lost.
 */
const CLIENT_MADE = [
  /^context deadline exceeded$/,
  /^context canceled$/,
  /^grpc: /,
  /^transport is closing$/,
  /^connection error: /,
  /^error reading from server: /,
  /^stream terminated by RST_STREAM /,
  /^server closed the stream without sending trailers$/,
];

/** A ghz error line (`rpc error: code = Canceled desc = …`): its status name, and whether the server sent it. */
function parseError(error: string): { code?: string; fromServer: boolean } {
  const match = /^rpc error: code = (\w+) desc = ([\s\S]*)$/.exec(error);
  if (!match) return { fromServer: false };
  return { code: match[1], fromServer: !CLIENT_MADE.some((pattern) => pattern.test(match[2]!)) };
}

/** The status name of a ghz error line, when it came from the server. */
export function serverStatusOf(error: string): string | undefined {
  const { code, fromServer } = parseError(error);
  return fromServer ? code : undefined;
}

export function summarizeReport(report: GhzReport): RunSummary {
  const at = (p: number) => {
    const point = (report.latencyDistribution ?? []).find((d) => d.percentage === p);
    return point === undefined ? NaN : point.latency / 1e6;
  };
  // ghz counts every call under a status, the ones its client failed too (as Canceled, Unavailable…).
  const statuses = { ...(report.statusCodeDistribution ?? {}) };
  const clientErrors: Record<string, number> = {};
  for (const [error, count] of Object.entries(report.errorDistribution ?? {})) {
    const { code, fromServer } = parseError(error);
    if (fromServer) continue;
    clientErrors[error] = count;
    if (code !== undefined && statuses[code] !== undefined) {
      statuses[code] -= count;
      if (statuses[code] <= 0) delete statuses[code];
    }
  }
  return {
    calls: report.count,
    endReason: report.endReason ?? "normal",
    callsPerSecond: report.rps,
    p50Ms: at(50),
    p95Ms: at(95),
    p99Ms: at(99),
    statuses,
    clientErrors,
  };
}

/** How to get ghz, for a machine that lacks it. */
export const INSTALL_GHZ = [
  "ghz is not on the PATH, so nothing was measured. Install it, then run this again:",
  "  go install github.com/bojand/ghz/cmd/ghz@latest      (Go 1.23 or later; puts ghz in ~/go/bin)",
  "  or download a release binary from https://github.com/bojand/ghz/releases and put it on the PATH",
].join("\n");
