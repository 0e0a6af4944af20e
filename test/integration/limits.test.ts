/**
 * Connection limits (configurable, README "Settings"): a client that sends
 * its headers a byte at a time is cut off; connections past the limit are
 * closed on arrival; the HTTP/2 stream limit is announced to every client.
 */
import http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

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

const open = (port: number) =>
  new Promise<Socket>((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => resolve(socket));
    socket.once("error", reject);
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
});
