/**
 * Bad input at the wire and the admin door: each refused with a code, the
 * server still serving good calls after each; the admin token never leaks.
 */
import http2 from "node:http2";
import { connect } from "node:net";
import { gzipSync } from "node:zlib";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { grpcFrame, type RawGrpcResult, rawGrpcCall } from "../../harness/raw-grpc.js";
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
  // Bytes that do not decode as the request are the client's fault: INVALID_ARGUMENT with the
  // decoder's reason, in every protocol and for unary and streaming methods alike (connect-es
  // itself would answer INTERNAL, the code kept for the server's own faults).
  const TRUNCATED_FIELD = Buffer.from([0x0a, 100, 0x41, 0x42, 0x43]); // field 1 declared 100 bytes long, 3 given
  const INVALID_UTF8 = Buffer.from([0x0a, 2, 0xc3, 0x28]); // field 1 (a string): 0xC3 0x28 is not UTF-8

  for (const path of ["/airavata.v1.GenerationService/Tokenize", "/airavata.v1.GenerationService/Generate"]) {
    const method = path.split("/").at(-1);
    it(`gRPC ${method}: invalid protobuf bytes → INVALID_ARGUMENT naming the parse failure`, async () => {
      const res = await rawGrpc(path, frame(TRUNCATED_FIELD));
      expect(res.grpc).toBe("3");
      expect(res.message).toMatch(/^parse binary: /);
      await stillServing();
    });

    it(`gRPC ${method}: invalid UTF-8 in a string field → INVALID_ARGUMENT naming it`, async () => {
      const res = await rawGrpc(path, frame(INVALID_UTF8));
      expect(res.grpc).toBe("3");
      expect(res.message).toMatch(/^parse binary: .*UTF-8/i);
      await stillServing();
    });

    it(`gRPC ${method}: a compressed frame without grpc-encoding → INVALID_ARGUMENT`, async () => {
      const res = await rawGrpc(path, grpcFrame(Buffer.from([0x0a, 1, 0x41]), { compressed: true }));
      expect(res.grpc).toBe("3");
      expect(res.message).toMatch(/compressed/);
      await stillServing();
    });
  }

  it("gRPC with grpc-encoding gzip: a good message is served, one that does not decode → INVALID_ARGUMENT", async () => {
    const call = (payload: Buffer) => {
      const session = http2.connect(baseUrl);
      return rawGrpcCall(session, "/airavata.v1.GenerationService/Tokenize", grpcFrame(gzipSync(payload), { compressed: true }), {
        encoding: "gzip",
      }).finally(() => session.close());
    };
    const good = await call(Buffer.from([0x0a, 3, 0x41, 0x42, 0x43]));
    expect(good.grpc).toBe("0");
    const bad = await call(TRUNCATED_FIELD);
    expect(bad.grpc).toBe("3");
    expect(bad.message).toMatch(/^parse binary: /);
  });

  it("Connect unary protobuf that does not decode → HTTP 400 invalid_argument with the reason", async () => {
    const res = await fetch(`${baseUrl}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array(INVALID_UTF8),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toMatch(/^parse binary: .*UTF-8/i);
    // The same request, good bytes: served.
    const good = await fetch(`${baseUrl}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array([0x0a, 3, 0x41, 0x42, 0x43]),
    });
    expect(good.status).toBe(200);
  });

  it("Connect JSON of the wrong shape → HTTP 400 invalid_argument naming the field", async () => {
    for (const body of ['{"text": 12}', '{"text": ["a"]}', "[1,2]", '{"text": "a", "special": "yes"}']) {
      const res = await fetch(`${baseUrl}/airavata.v1.GenerationService/Tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      expect(res.status, body).toBe(400);
      const error = (await res.json()) as { code: string; message: string };
      expect(error.code, body).toBe("invalid_argument");
      expect(error.message, body).not.toBe("");
    }
  });

  it("Connect streaming (Generate) and gRPC-Web (Tokenize) bytes that do not decode → invalid_argument", async () => {
    // Connect's streaming protocol: the error is in the end-of-stream frame's JSON.
    const stream = await fetch(`${baseUrl}/airavata.v1.GenerationService/Generate`, {
      method: "POST",
      headers: { "content-type": "application/connect+proto" },
      body: new Uint8Array(frame(TRUNCATED_FIELD)),
    });
    const end = Buffer.from(await stream.arrayBuffer());
    expect(end[0]).toBe(0x02); // the end-of-stream flag
    const endStream = JSON.parse(end.subarray(5).toString()) as { error: { code: string; message: string } };
    expect(endStream.error.code).toBe("invalid_argument");
    expect(endStream.error.message).toMatch(/^parse binary: /);
    // gRPC-Web: the status is in the trailer frame at the end of the body.
    const web = await fetch(`${baseUrl}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto" },
      body: new Uint8Array(frame(INVALID_UTF8)),
    });
    const trailer = Buffer.from(await web.arrayBuffer());
    expect(trailer[0]).toBe(0x80); // the trailer flag
    expect(trailer.subarray(5).toString()).toMatch(/grpc-status: ?3\r\n/);
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
