import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRegistry, fromJson, type JsonObject } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { loadConfigs, runConfig, summarizeReport } from "../../bench/ghz/report.js";
import { file_airavata_v1_admin } from "../../src/gen/airavata/v1/admin_pb.js";
import { file_airavata_v1_generation } from "../../src/gen/airavata/v1/generation_pb.js";
import { file_grpc_health_v1_health } from "../../src/gen/grpc/health/v1/health_pb.js";
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

    it(`${file} is a bounded plaintext run: a number of calls, a time bound, a deadline per call`, () => {
      expect(config.insecure).toBe(true);
      expect(config.total).toBeGreaterThan(0);
      expect(config["max-duration"]).toMatch(durationPattern);
      expect(config.timeout).toMatch(durationPattern);
      const run = runConfig(config, 64, "127.0.0.1:1234");
      expect(run).toMatchObject({ concurrency: 64, host: "127.0.0.1:1234", format: "json" });
      expect(run.total).toBeGreaterThanOrEqual(64 * 4);
    });
  }
});

describe("ghz report summary", () => {
  it("reads latencies (ns) as ms, calls/s, statuses and errors", () => {
    const summary = summarizeReport({
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
      callsPerSecond: 50,
      p50Ms: 12.5,
      p95Ms: 40,
      p99Ms: 81,
      statuses: { OK: 190, ResourceExhausted: 10 },
      errors: 10,
    });
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
