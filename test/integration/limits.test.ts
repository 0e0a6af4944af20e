/**
 * Connection limits (configurable, README "Settings"): a client that sends
 * its headers a byte at a time is cut off; connections past the limit, in all
 * or from one client, are closed on arrival; the HTTP/2 stream limit is
 * announced and kept (a client past it loses its own connection, nobody
 * else's); HTTP/2 connections left idle are closed.
 */
import http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { TokenizeRequestSchema } from "../../src/gen/airavata/v1/generation_pb.js";
import { FRAME, RawH2 } from "../../harness/raw-h2.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const TOKENIZE = "/airavata.v1.GenerationService/Tokenize";
const tokenizeBody = toBinary(TokenizeRequestSchema, create(TokenizeRequestSchema, { text: "नमस्ते" }));

let server: TestServer | undefined;
afterEach(async () => {
  await server?.app.shutdown();
  server = undefined;
});

async function stillServing(s: TestServer): Promise<void> {
  const client = new AiravataClient(s.address);
  const ok = await client.generate({ prompt: "The", raw: true, temperature: 0 });
  client.close();
  expect(ok.text).toBe("end of story🙏");
}

const open = (port: number, localAddress?: string) =>
  new Promise<Socket>((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1", localAddress }, () => resolve(socket));
    socket.once("error", reject);
  });

const closedWithin = (socket: Socket, ms: number) =>
  new Promise<boolean>((resolve) => {
    if (socket.destroyed) return resolve(true);
    socket.once("close", () => resolve(true));
    setTimeout(() => resolve(false), ms);
  });

describe("connection limits", () => {
  it("slowloris: request headers a byte at a time are cut off at the headers timeout", async () => {
    server = await startTestServer({ headersTimeoutMs: 1000 });
    const socket = await open(server.app.address.port);
    const started = Date.now();
    const closed = new Promise<string>((resolve) => {
      let data = "";
      socket.on("data", (d) => (data += String(d)));
      socket.on("close", () => resolve(data));
      socket.on("error", () => {});
    });
    socket.write("GET /metrics HTTP/1.1\r\n");
    const header = "X-Slow: " + "a".repeat(100);
    let i = 0;
    const drip = setInterval(
      () => (i < header.length && !socket.destroyed ? socket.write(header[i++]!) : clearInterval(drip)),
      100,
    );
    const answer = await closed;
    clearInterval(drip);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(5000);
    expect(answer).toMatch(/^(HTTP\/1\.1 408|)/);
    await stillServing(server);
  });

  it("connections past --max-connections are closed on arrival; the ones inside keep working", async () => {
    server = await startTestServer({ maxConnections: 3 });
    const port = server.app.address.port;
    const held = [await open(port), await open(port), await open(port)];
    const extra = await open(port);
    const extraClosed = await new Promise<boolean>((resolve) => {
      extra.once("close", () => resolve(true));
      setTimeout(() => resolve(false), 2000);
    });
    expect(extraClosed).toBe(true);
    for (const s of held) s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    await stillServing(server);
  });

  it("announces --max-streams-per-connection in its HTTP/2 settings", async () => {
    server = await startTestServer({ maxStreamsPerConnection: 2 });
    const session = http2.connect(server.baseUrl);
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    session.close();
    expect(settings.maxConcurrentStreams).toBe(2);
  });

  it("streams past --max-streams-per-connection: clients that wait for room complete every call; one that ignores the limit loses only its own connection", async () => {
    server = await startTestServer({ maxStreamsPerConnection: 2 });
    // grpc-js holds calls past the announced limit until a stream ends: six at once on one connection all complete.
    const client = new AiravataClient(server.address);
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, () => client.generate({ prompt: "The", raw: true, temperature: 0 })),
    );
    client.close();
    expect(outcomes.map((o) => o.text)).toEqual(Array(6).fill("end of story🙏"));

    const port = server.app.address.port;
    const neighbour = await RawH2.connect(port);
    const calm = neighbour.open(TOKENIZE);
    const rogue = await RawH2.connect(port);
    // Acknowledged the limit of two, then opens four: nghttp2 takes that as a connection error.
    for (let i = 0; i < 4; i++) rogue.open(TOKENIZE);
    await rogue.until((f) => f.type === FRAME.GOAWAY, "GOAWAY for the client past the limit");
    await rogue.closed;
    // The connection beside it never noticed.
    neighbour.finish(calm, tokenizeBody);
    await neighbour.until((f) => f.stream === calm && neighbour.ended(calm), "the neighbour's call to end");
    expect(neighbour.reset(calm)).toBeUndefined();
    expect(neighbour.frames.some((f) => f.type === FRAME.GOAWAY)).toBe(false);
    neighbour.close();
    await stillServing(server);
  });

  it("many idle connections from one client: past --max-connections-per-client closed on arrival, idle HTTP/2 ones closed after --idle-timeout; other clients served throughout", async () => {
    server = await startTestServer({ maxConnectionsPerClient: 20, idleTimeoutMs: 1000 });
    const port = server.app.address.port;
    // Another loopback address plays the greedy client; the test's calls come from 127.0.0.1.
    const idle = await Promise.all(Array.from({ length: 20 }, () => RawH2.connect(port, "127.0.0.2")));
    const extra = await Promise.all(Array.from({ length: 10 }, () => open(port, "127.0.0.2")));
    expect(await Promise.all(extra.map((s) => closedWithin(s, 2000)))).toEqual(Array(10).fill(true));
    await stillServing(server);
    const started = Date.now();
    await Promise.all(idle.map((h2) => h2.closed));
    expect(Date.now() - started).toBeLessThan(5000);
    for (const h2 of idle) expect(h2.frames.some((f) => f.type === FRAME.GOAWAY)).toBe(true);
    // Its connections gone, the same client is let in again (the server counts a connection gone when
    // its own side has closed, a moment after the client saw it close: a few tries within a second).
    let back: RawH2 | undefined;
    for (let attempt = 0; !back; attempt++) {
      back = await RawH2.connect(port, "127.0.0.2", 200).catch((error: unknown) => {
        if (attempt >= 5) throw error;
        return undefined;
      });
    }
    const id = back.open(TOKENIZE);
    back.finish(id, tokenizeBody);
    await back.until((f) => f.stream === id && back.ended(id), "a call from the client let back in");
    back.close();
  });

  it("an open stream keeps its HTTP/2 connection from idling out, however quiet", async () => {
    server = await startTestServer({ idleTimeoutMs: 1000 });
    const h2 = await RawH2.connect(server.app.address.port);
    try {
      const id = h2.open(TOKENIZE);
      await new Promise((r) => setTimeout(r, 2500));
      expect(h2.frames.some((f) => f.type === FRAME.GOAWAY)).toBe(false);
      h2.finish(id, tokenizeBody);
      await h2.until((f) => f.stream === id && h2.ended(id), "the end of the quiet stream");
      expect(h2.reset(id)).toBeUndefined();
      await h2.until((f) => f.type === FRAME.GOAWAY, "GOAWAY once idle", 5000);
    } finally {
      h2.close();
    }
  });
});
