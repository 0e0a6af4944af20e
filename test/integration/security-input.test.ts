/**
 * Bad input at the wire and the admin door: each refused with a code, the
 * server still serving good calls after each; the admin token never leaks.
 */
import http2 from "node:http2";
import { connect } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { grpcFrame, type RawGrpcResult, rawGrpcCall } from "../../bench/raw-grpc.js";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService } from "../../src/gen/airavata/v1/admin_pb.js";
import { Health, HealthCheckResponse_ServingStatus as HealthStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { modelPath } from "../helpers/models.js";
import { startServerProcess, type ServerProcess } from "../helpers/server.js";

const TOKEN = "s3cret-admin-token-do-not-leak-42";

let server: ServerProcess;
let baseUrl: string;
let client: AiravataClient;

beforeAll(async () => {
  server = await startServerProcess(
    ["--model", modelPath("q4_0"), "--threads", "1", "--parallel", "2", "--cors-origins", "*", "--log-level", "debug"],
    { AIRAVATA_ADMIN_TOKEN: TOKEN },
  );
  baseUrl = `http://127.0.0.1:${server.port}`;
  client = new AiravataClient(`127.0.0.1:${server.port}`);
  const health = createClient(Health, createGrpcTransport({ baseUrl }));
  for await (const { status } of health.watch({ service: "" })) if (status === HealthStatus.SERVING) break;
});
afterAll(async () => {
  client.close();
  server.child.kill("SIGTERM");
  await server.exited;
});

/** A good call still works: the check after every bad one. */
async function stillServing(): Promise<void> {
  const ok = await client.generate({ prompt: "The", raw: true, temperature: 0 });
  expect(ok.codeName).toBe("OK");
  expect(ok.text).toBe("end of story🙏");
}

/** One raw gRPC call on a connection of its own: the body bytes as given; the status from headers or trailers. */
async function rawGrpc(path: string, body: Buffer, contentType = "application/grpc"): Promise<RawGrpcResult> {
  const session = http2.connect(baseUrl);
  try {
    return await rawGrpcCall(session, path, body, { contentType });
  } finally {
    session.close();
  }
}

const frame = (payload: Buffer, declaredLength?: number) => grpcFrame(payload, { declaredLength });

describe("bad input on the wire", () => {
  // Bytes that do not decode as the request get INTERNAL, as grpc-go and grpc-java answer them
  // (Connect-ES does the same), with the decoder's reason.
  it("invalid protobuf bytes → INTERNAL naming the parse failure", async () => {
    // Field 1 (text) declared 100 bytes long, 3 given.
    const res = await rawGrpc("/airavata.v1.GenerationService/Tokenize", frame(Buffer.from([0x0a, 100, 0x41, 0x42, 0x43])));
    expect(res.grpc).toBe("13");
    expect(res.message).toMatch(/^parse binary: /);
    await stillServing();
  });

  it("invalid UTF-8 in a string field → INTERNAL naming the parse failure", async () => {
    const res = await rawGrpc("/airavata.v1.GenerationService/Tokenize", frame(Buffer.from([0x0a, 2, 0xc3, 0x28])));
    expect(res.grpc).toBe("13");
    expect(res.message).toMatch(/^parse binary: .*(UTF-8|utf-8|invalid)/i);
    await stillServing();
  });

  it("a truncated frame (fewer bytes than its length says) is refused, not waited on forever", async () => {
    const res = await rawGrpc("/airavata.v1.GenerationService/Tokenize", frame(Buffer.from([0x0a, 1, 0x41]), 50));
    expect(res.grpc).not.toBe("0");
    expect(res.grpc).toBeDefined();
    await stillServing();
  });

  it("an oversized frame → RESOURCE_EXHAUSTED before it is read", async () => {
    const res = await rawGrpc("/airavata.v1.GenerationService/Tokenize", frame(Buffer.alloc(0), 64 * 2 ** 20));
    expect(res.grpc).toBe("8");
    await stillServing();
  });

  it("a wrong content type → 415, an unknown method → 404 (UNIMPLEMENTED to gRPC clients)", async () => {
    expect((await rawGrpc("/airavata.v1.GenerationService/Tokenize", frame(Buffer.alloc(0)), "text/plain")).http).toBe(415);
    // 404, which gRPC clients read as UNIMPLEMENTED (the gRPC HTTP status mapping).
    expect((await rawGrpc("/airavata.v1.GenerationService/Nope", frame(Buffer.alloc(0)))).http).toBe(404);
    await stillServing();
  });

  it("HTTP/1.1 garbage gets 400 and a closed connection; the server serves on", async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = connect(server.port, "127.0.0.1", () => socket.write("GARBAGE \x00\x01\x02 NOT/HTTP\r\n\r\n"));
      let data = "";
      socket.on("data", (d) => (data += String(d)));
      socket.on("close", () => resolve(data));
      socket.on("error", reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    await stillServing();
  });
});

describe("the admin door", () => {
  const admin = () => createClient(AdminService, createGrpcTransport({ baseUrl }));

  it("no RPC loads a path: path-like variant ids are unknown ids, and nothing changes", async () => {
    const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
    for (const id of ["../../etc/passwd", "/tmp/evil.gguf", modelPath("q8_0"), "models/../tiny.q4_0.gguf"]) {
      const events: unknown[] = [];
      let code: Code | undefined;
      try {
        for await (const e of admin().swapVariant({ variantId: id }, auth)) events.push(e);
      } catch (error) {
        code = ConnectError.from(error).code;
      }
      expect(code, id).toBe(Code.NotFound);
      expect(events).toHaveLength(1); // "checking", then the refusal
    }
    expect((await admin().getStatus({}, auth)).activeVariant).toBe("tiny.q4_0");
    await stillServing();
  });

  it("the token never appears in logs or error messages, sent right or wrong", async () => {
    const messages: string[] = [];
    for (const authorization of [`Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, 20)}`, `Basic ${TOKEN}`, TOKEN]) {
      try {
        await admin().getStatus({}, { headers: { authorization } });
      } catch (error) {
        messages.push((error as Error).message);
      }
    }
    await admin().listVariants({}, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(messages).toHaveLength(4);
    const logs = JSON.stringify(server.logs);
    for (const text of [logs, ...messages]) {
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(TOKEN.slice(0, 20));
    }
  });

  it("CORS with `*` never allows credentials", async () => {
    const res = await fetch(`${baseUrl}/airavata.v1.AdminService/GetStatus`, {
      method: "OPTIONS",
      headers: {
        origin: "https://anywhere.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      },
    });
    expect(res.headers.get("access-control-allow-origin")).toBe("*");
    expect(res.headers.get("access-control-allow-credentials")).toBeNull();
  });
});
