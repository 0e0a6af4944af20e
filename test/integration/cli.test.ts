import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { modelPath } from "../helpers/models.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
const cli = (args: string[], env: Record<string, string> = {}) =>
  exec(process.execPath, ["--import", "tsx", "clients/cli.ts", ...args], { cwd: ROOT, env: { ...process.env, ...env } }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

const TOKEN = "cli-test-admin-token-0123456789";
let server: TestServer;
beforeAll(async () => {
  const modelsDir = mkdtempSync(join(tmpdir(), "airavata-cli-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
  copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
  server = await startTestServer({ modelPath: undefined, variant: "tiny.q4_0", modelsDir, adminToken: TOKEN });
});
afterAll(async () => {
  await server.app.shutdown();
});

describe("command-line client", () => {
  it("streams the text, then prints the metrics from the trailers", async () => {
    const { code, stdout, stderr } = await cli(["-a", server.address, "generate", "The", "--raw", "-t", "0"]);
    expect(code).toBe(0);
    expect(stdout).toBe("end of story🙏");
    expect(stderr).toMatch(/\[tiny.q4_0\] OK · finish stop · prompt 2 tok · generated 7 tok · queue [\d.]+ ms · ttft [\d.]+ ms/);
  });

  it("tokenizes", async () => {
    const { code, stdout } = await cli(["-a", server.address, "tokenize", "नमस्ते"]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^1 tokens \(tiny.q4_0\): \d+\n$/);
  });

  it("reports a bad request with its code and exits 1", async () => {
    const { code, stderr } = await cli(["-a", server.address, "generate", "hi", "--temperature", "9"]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/error: INVALID_ARGUMENT: temperature must be in \[0, 2\], got 9/);
  });

  it("says clearly when no server is there", async () => {
    const { code, stderr } = await cli(["-a", "127.0.0.1:1", "generate", "hi"]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/error: UNAVAILABLE: .*is the server running at 127\.0\.0\.1:1\?/);
  });

  it("admin list shows the variants and the one in service", async () => {
    const { code, stdout } = await cli(["-a", server.address, "admin", "list"], { AIRAVATA_ADMIN_TOKEN: TOKEN });
    expect(code).toBe(0);
    expect(stdout).toMatch(/^\* tiny\.q4_0 +Q4_0 .*in service$/m);
    expect(stdout).toMatch(/^ {2}tiny\.q8_0 +Q8_0 .*downloaded$/m);
    expect(stdout).toMatch(/^ {2}q4_k_m .*download from hf:mradermacher\/Airavata-GGUF\/Airavata\.Q4_K_M\.gguf$/m);
  });

  it("admin swap shows each phase, then admin status names the new variant", async () => {
    const swap = await cli(["-a", server.address, "admin", "swap", "tiny.q8_0"], { AIRAVATA_ADMIN_TOKEN: TOKEN });
    expect(swap.code).toBe(0);
    const phases = swap.stderr
      .split("\n")
      .map((l) => /s {2}(\w+)/.exec(l)?.[1])
      .filter(Boolean);
    expect([...new Set(phases)]).toEqual(["checking", "loading", "warming", "switched", "draining", "released", "done"]);
    const status = await cli(["-a", server.address, "admin", "status"], { AIRAVATA_ADMIN_TOKEN: TOKEN });
    expect(status.stdout).toMatch(/^variant: +tiny\.q8_0$/m);
  });

  it("admin load, route and unload; generate --variant; compare streams one prompt from both", async () => {
    const env = { AIRAVATA_ADMIN_TOKEN: TOKEN };
    const phasesOf = (stderr: string) => [
      ...new Set(
        stderr
          .split("\n")
          .map((l) => /s {2}(\w+)/.exec(l)?.[1])
          .filter(Boolean),
      ),
    ];
    const load = await cli(["-a", server.address, "admin", "load", "tiny.q4_0"], env);
    expect(load.code).toBe(0);
    expect(phasesOf(load.stderr)).toEqual(["checking", "loading", "warming", "done"]);
    const route = await cli(["-a", server.address, "admin", "route", "tiny.q4_0=50", "tiny.q8_0=50"], env);
    expect(route.code).toBe(0);
    expect(route.stdout).toBe("tiny.q8_0  weight 50  50.0%\ntiny.q4_0  weight 50  50.0%\n");
    const status = await cli(["-a", server.address, "admin", "status"], env);
    expect(status.stdout).toMatch(/^loaded: +tiny\.q8_0 \(Q8_0\) weight 50, \d+ calls, running 0, queued 0$/m);
    expect(status.stdout).toMatch(/^loaded: +tiny\.q4_0 \(Q4_0\) weight 50, 0 calls, running 0, queued 0$/m);
    const named = await cli(["-a", server.address, "generate", "The", "--raw", "-t", "0", "--variant", "tiny.q4_0"]);
    expect(named.stdout).toBe("end of story🙏");
    expect(named.stderr).toMatch(/^\[tiny\.q4_0\] OK/m);
    const compare = await cli(["-a", server.address, "compare", "--variants", "tiny.q4_0,tiny.q8_0", "--prompt", "The", "--raw"]);
    expect(compare.code).toBe(0);
    expect(compare.stdout).toMatch(/^variant +ttft +decode +tokens +finish$/m);
    expect(compare.stdout).toMatch(/^tiny\.q4_0 +[\d.]+ ms +[\d.]+ tok\/s +7 +stop$/m);
    expect(compare.stdout).toMatch(/^tiny\.q8_0 +[\d.]+ ms +[\d.]+ tok\/s +\d+ +\w+$/m);
    expect(compare.stdout).toMatch(/^\[tiny\.q4_0\] end of story🙏$/m);
    expect(compare.stdout).toMatch(
      /^tiny\.q8_0 (gives the same text as tiny\.q4_0|first differs from tiny\.q4_0 at character \d+: .*)$/m,
    );
    const unrouted = await cli(["-a", server.address, "admin", "route", "tiny.q8_0=100"], env);
    expect(unrouted.code).toBe(0);
    const unload = await cli(["-a", server.address, "admin", "unload", "tiny.q4_0"], env);
    expect(unload.code).toBe(0);
    expect(phasesOf(unload.stderr)).toEqual(["draining", "released", "done"]);
    const bad = await cli(["-a", server.address, "admin", "route", "tiny.q8_0=lots"], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/"tiny\.q8_0=lots" is not id=weight/);
  }, 60_000);

  it("admin drain takes the server out of rotation and --resume puts it back", async () => {
    const env = { AIRAVATA_ADMIN_TOKEN: TOKEN };
    const drained = await cli(["-a", server.address, "admin", "drain"], env);
    expect(drained).toMatchObject({ code: 0, stdout: "drained; 0 calls in flight\n" });
    const resumed = await cli(["-a", server.address, "admin", "drain", "--resume"], env);
    expect(resumed).toMatchObject({ code: 0, stdout: "in rotation; 0 calls in flight\n" });
  });

  it("admin without a token gives the auth error and exits 1", async () => {
    const { code, stderr } = await cli(["-a", server.address, "admin", "status"], { AIRAVATA_ADMIN_TOKEN: "" });
    expect(code).toBe(1);
    expect(stderr).toMatch(/error: UNAUTHENTICATED: admin RPCs need the header `authorization: Bearer <admin token>`/);
  });
});
