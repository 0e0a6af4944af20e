import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
const cli = (args: string[]) =>
  exec(process.execPath, ["--import", "tsx", "clients/cli.ts", ...args], { cwd: ROOT }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
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
});
