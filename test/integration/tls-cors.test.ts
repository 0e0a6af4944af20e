import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { GenerationService } from "../../src/gen/airavata/v1/generation_pb.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

describe("TLS with ALPN", () => {
  let server: TestServer;
  let cert: Buffer;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), "airavata-tls-"));
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        join(dir, "key.pem"),
        "-out",
        join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
    cert = readFileSync(join(dir, "cert.pem"));
    server = await startTestServer({ tls: { cert, key: readFileSync(join(dir, "key.pem")) } });
  });
  afterAll(async () => {
    await server.app.shutdown();
  });

  it("serves gRPC over h2", async () => {
    const client = new AiravataClient(`localhost:${server.app.address.port}`, grpc.credentials.createSsl(cert));
    const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    client.close();
    expect(outcome.codeName).toBe("OK");
    expect(outcome.text).toBe("end of story🙏");
  });

  it("serves Connect over HTTP/1.1 and h2", async () => {
    for (const httpVersion of ["1.1", "2"] as const) {
      const transport = createConnectTransport({
        baseUrl: `https://localhost:${server.app.address.port}`,
        httpVersion,
        nodeOptions: { ca: cert },
      });
      const response = await createClient(GenerationService, transport).tokenize({ text: "नमस्ते" });
      expect(response.count).toBe(1);
    }
  });
});

describe("CORS", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ corsOrigins: ["http://app.example"] });
  });
  afterAll(async () => {
    await server.app.shutdown();
  });

  it("answers a configured origin's preflight with the Connect and gRPC-Web headers", async () => {
    const response = await fetch(`${server.baseUrl}/airavata.v1.GenerationService/Generate`, {
      method: "OPTIONS",
      headers: {
        origin: "http://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,connect-protocol-version,x-grpc-web",
      },
    });
    expect(response.status).toBeLessThan(300);
    expect(response.headers.get("access-control-allow-origin")).toBe("http://app.example");
    const allowed = response.headers.get("access-control-allow-headers") ?? "";
    for (const h of ["content-type", "connect-protocol-version", "x-grpc-web", "grpc-timeout", "connect-timeout-ms"]) {
      expect(allowed.toLowerCase()).toContain(h);
    }
  });

  it("exposes the metric trailers to the page", async () => {
    const response = await fetch(`${server.baseUrl}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { origin: "http://app.example", "content-type": "application/json" },
      body: JSON.stringify({ text: "नमस्ते" }),
    });
    expect(response.status).toBe(200);
    const exposed = (response.headers.get("access-control-expose-headers") ?? "").toLowerCase().split(",");
    for (const h of [
      "airavata-ttft-ms",
      "trailer-airavata-ttft-ms",
      "airavata-metrics-bin",
      "grpc-status",
      "grpc-message",
      "x-request-id",
    ]) {
      expect(exposed).toContain(h);
    }
  });

  it("gives other origins nothing", async () => {
    const response = await fetch(`${server.baseUrl}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { origin: "http://evil.example", "content-type": "application/json" },
      body: JSON.stringify({ text: "x" }),
    });
    expect(response.headers.get("access-control-allow-origin")).toBeNull();
  });
});
