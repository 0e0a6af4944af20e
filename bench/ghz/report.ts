/**
 * ghz runs as the bench uses them: the project's configs (bench/ghz/*.json),
 * one run per concurrency level, and the summary of ghz's JSON report
 * (latencies in nanoseconds) as milliseconds, calls/s and errors.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const CONFIG_DIR = fileURLToPath(new URL(".", import.meta.url));

/** The keys of a ghz config file that the project's configs use. */
export interface GhzConfig {
  name: string;
  call: string;
  host: string;
  insecure: boolean;
  total: number;
  concurrency: number;
  /** The time bound of a run: ghz stops there even if `total` calls have not been made. */
  "max-duration": string;
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
  count: number;
  total: number;
  rps: number;
  latencyDistribution: { percentage: number; latency: number }[] | null;
  statusCodeDistribution?: Record<string, number> | null;
  errorDistribution?: Record<string, number> | null;
}

export interface RunSummary {
  calls: number;
  callsPerSecond: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  statuses: Record<string, number>;
  errors: number;
}

export function summarizeReport(report: GhzReport): RunSummary {
  const at = (p: number) => {
    const point = (report.latencyDistribution ?? []).find((d) => d.percentage === p);
    return point === undefined ? NaN : point.latency / 1e6;
  };
  const statuses = { ...(report.statusCodeDistribution ?? {}) };
  const errors = Object.values(report.errorDistribution ?? {}).reduce((a, b) => a + b, 0);
  return { calls: report.count, callsPerSecond: report.rps, p50Ms: at(50), p95Ms: at(95), p99Ms: at(99), statuses, errors };
}

/** How to get ghz, for a machine that lacks it. */
export const INSTALL_GHZ = [
  "ghz is not on the PATH, so nothing was measured. Install it, then run this again:",
  "  go install github.com/bojand/ghz/cmd/ghz@latest      (Go 1.21 or later; puts ghz in ~/go/bin)",
  "  or download a release binary from https://github.com/bojand/ghz/releases and put it on the PATH",
].join("\n");
