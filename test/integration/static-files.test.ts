import { request } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "../helpers/server.js";

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.app.shutdown();
});

/** A raw GET, the path sent exactly as written (fetch would normalize `..` away). */
function rawGet(path: string): Promise<{ status: number; body: string; type: string }> {
  const { port } = server.app.address;
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method: "GET" }, (res) => {
      let body = "";
      res.on("data", (d) => (body += String(d)));
      res.on("end", () => resolve({ status: res.statusCode!, body, type: String(res.headers["content-type"]) }));
    });
    req.once("error", reject);
    req.end();
  });
}

describe("the playground's files at /", () => {
  it("serves the playground page and its assets", async () => {
    const page = await rawGet("/");
    expect(page.status).toBe(200);
    expect(page.type).toMatch(/^text\/html/);
    expect(page.body).toContain("airavata-serve playground");
    const script = /src="\.\/(assets\/[^"]+\.js)"/.exec(page.body)?.[1];
    expect(script).toBeDefined();
    const asset = await rawGet(`/${script}`);
    expect(asset.status).toBe(200);
    expect(asset.type).toMatch(/javascript/);
  });

  it("never serves a file outside its folder, however the path is written", async () => {
    for (const path of [
      "/../package.json",
      "/..%2fpackage.json",
      "/%2e%2e/%2e%2e/package.json",
      "/assets/../../../../package.json",
      "/assets/..%2f..%2f..%2f..%2fpackage.json",
      "/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
      "/....//....//package.json",
      "/.gitignore",
    ]) {
      const res = await rawGet(path);
      expect(res.body, path).not.toContain('"name": "airavata-serve"');
      expect(res.body, path).not.toContain("root:");
      expect([400, 404], path).toContain(res.status);
    }
  });

  it("answers an unknown path with 404 and RPC paths still reach the RPCs", async () => {
    expect((await rawGet("/no/such/file.js")).status).toBe(404);
    // Connect GET for a side-effect-free method goes to the RPC, not to the files.
    const message = encodeURIComponent(JSON.stringify({ text: "नमस्ते" }));
    const res = await rawGet(`/airavata.v1.GenerationService/Tokenize?connect=v1&encoding=json&message=${message}`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ variant: "tiny.q4_0" });
  });
});
