import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRegistry, fromJson, type JsonObject } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { loadConfigs, runConfig, type RunSummary, serverStatusOf, summarizeReport } from "../../bench/ghz/report.js";
import { file_airavata_v1_admin } from "../../src/gen/airavata/v1/admin_pb.js";
import { file_airavata_v1_generation } from "../../src/gen/airavata/v1/generation_pb.js";
import { file_grpc_health_v1_health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { ghzInstalled } from "../helpers/ghz.js";
import { modelPath } from "../helpers/models.js";
import { ROOT } from "../helpers/server.js";

const registry = createRegistry(file_airavata_v1_generation, file_airavata_v1_admin, file_grpc_health_v1_health);
const configs = loadConfigs();
const durationPattern = /^\d+(\.\d+)?(ms|s|m|h)$/;

describe("bench/ghz configs", () => {
  it("cover Generate and Tokenize", () => {
    expect(configs.map((c) => c.config.call).sort()).toEqual([
      "airavata.v1.GenerationService.Generate",
      "airavata.v1.GenerationService.Tokenize",
    ]);
  });

  for (const { file, config } of configs) {
    it(`${file} names an existing method, and its data parses as that method's request`, () => {
      // ghz accepts package.Service.Method and package.Service/Method.
      const cut = Math.max(config.call.lastIndexOf("."), config.call.lastIndexOf("/"));
      const service = registry.getService(config.call.slice(0, cut));
      expect(service, `service of ${config.call}`).toBeDefined();
      const method = service!.methods.find((m) => m.name === config.call.slice(cut + 1));
      expect(method, config.call).toBeDefined();
      // Strict: an unknown or mistyped field throws.
      const request = fromJson(method!.input, config.data as JsonObject);
      expect(Object.keys(config.data).length).toBeGreaterThan(0);
      expect(request.$typeName).toBe(method!.input.typeName);
    });

    it(`${file} is a count-bounded plaintext run: a number of calls, no time bound that would override it, a deadline per call`, () => {
      expect(config.insecure).toBe(true);
      expect(config.total).toBeGreaterThan(0);
      // In ghz, `duration` (-z) and `max-duration` (-x) make a run timed and `total` is ignored.
      const keys = Object.keys(config);
      expect(keys).not.toContain("duration");
      expect(keys).not.toContain("max-duration");
      expect(keys).not.toContain("z");
      expect(keys).not.toContain("x");
      expect(config.timeout).toMatch(durationPattern);
      const run = runConfig(config, 64, "127.0.0.1:1234");
      expect(run).toMatchObject({ concurrency: 64, host: "127.0.0.1:1234", format: "json" });
      expect(run.total).toBeGreaterThanOrEqual(64 * 4);
    });
  }
});

describe("ghz report summary", () => {
  it("reads latencies (ns) as ms, calls/s, and the server's statuses", () => {
    const summary = summarizeReport({
      endReason: "normal",
      count: 200,
      total: 4e9,
      rps: 50,
      latencyDistribution: [
        { percentage: 10, latency: 1e6 },
        { percentage: 50, latency: 12.5e6 },
        { percentage: 95, latency: 40e6 },
        { percentage: 99, latency: 81e6 },
      ],
      statusCodeDistribution: { OK: 190, ResourceExhausted: 10 },
      errorDistribution: { "rpc error: code = ResourceExhausted desc = busy": 10 },
    });
    expect(summary).toEqual({
      calls: 200,
      endReason: "normal",
      callsPerSecond: 50,
      p50Ms: 12.5,
      p95Ms: 40,
      p99Ms: 81,
      statuses: { OK: 190, ResourceExhausted: 10 },
      clientErrors: {},
    });
  });

  it("keeps the errors ghz's own client made apart from what the server answered", () => {
    // A run stopped at its bound: four calls cut by ghz closing its connection, two ended by its
    // own timer, one DEADLINE_EXCEEDED and one RESOURCE_EXHAUSTED from the server.
    const summary = summarizeReport({
      endReason: "cancel",
      count: 100,
      total: 4e9,
      rps: 25,
      latencyDistribution: null,
      statusCodeDistribution: { OK: 92, Canceled: 4, DeadlineExceeded: 3, ResourceExhausted: 1 },
      errorDistribution: {
        "rpc error: code = Canceled desc = grpc: the client connection is closing": 4,
        "rpc error: code = DeadlineExceeded desc = context deadline exceeded": 2,
        "rpc error: code = DeadlineExceeded desc = the deadline passed before the generation finished": 1,
        "rpc error: code = ResourceExhausted desc = the server is busy: 4 running and 8 queued (the queue limit); retry later": 1,
      },
    });
    expect(summary.endReason).toBe("cancel");
    expect(summary.statuses).toEqual({ OK: 92, DeadlineExceeded: 1, ResourceExhausted: 1 });
    expect(summary.clientErrors).toEqual({
      "rpc error: code = Canceled desc = grpc: the client connection is closing": 4,
      "rpc error: code = DeadlineExceeded desc = context deadline exceeded": 2,
    });
  });

  it("tells a server's status from a message grpc-go made up", () => {
    expect(serverStatusOf("rpc error: code = InvalidArgument desc = prompt is empty")).toBe("InvalidArgument");
    expect(serverStatusOf('rpc error: code = Unavailable desc = connection error: desc = "transport: EOF"')).toBeUndefined();
    expect(serverStatusOf("rpc error: code = Canceled desc = context canceled")).toBeUndefined();
    expect(serverStatusOf("ghz: cannot connect")).toBeUndefined();
  });
});

describe("npm run bench:ghz without ghz", () => {
  it("says how to install it, exits 1 and measures nothing", () => {
    const out = join(mkdtempSync(join(tmpdir(), "airavata-ghz-test-")), "results");
    const run = spawnSync(process.execPath, ["--import", "tsx", "bench/ghz/run.ts", "--out", out], {
      cwd: ROOT,
      env: { ...process.env, GHZ: "/nonexistent/ghz" },
      encoding: "utf8",
    });
    expect(run.status).toBe(1);
    expect(run.stderr).toContain("ghz is not on the PATH, so nothing was measured");
    expect(run.stderr).toContain("go install github.com/bojand/ghz/cmd/ghz@latest");
    expect(existsSync(out)).toBe(false);
  });
});

// ghz is not in npm or Debian (a Go program): this runs where a developer has installed it.
describe.runIf(ghzInstalled)("npm run bench:ghz with ghz installed", () => {
  it("makes exactly each level's number of calls, and the server's statuses are all OK", { timeout: 300_000 }, () => {
    const out = join(mkdtempSync(join(tmpdir(), "airavata-ghz-test-")), "results");
    const run = spawnSync(
      process.execPath,
      ["--import", "tsx", "bench/ghz/run.ts", "--model", modelPath("q4_0"), "--concurrency", "1,4", "--out", out],
      { cwd: ROOT, encoding: "utf8" },
    );
    expect(run.status, run.stderr).toBe(0);
    const report = JSON.parse(readFileSync(join(out, "ghz.json"), "utf8")) as {
      machine: string;
      rows: { total: number; summary: RunSummary }[];
    };
    expect(report.machine).toMatch(/ghz \S+$/);
    expect(report.rows).toHaveLength(4);
    for (const { total, summary } of report.rows) {
      expect(summary.endReason).toBe("normal");
      expect(summary.calls).toBe(total);
      expect(summary.statuses).toEqual({ OK: total });
      expect(summary.clientErrors).toEqual({});
    }
  });
});
