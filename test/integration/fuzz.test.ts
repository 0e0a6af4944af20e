import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runFuzz } from "../../harness/fuzz.js";
import { idle, sample } from "../helpers/metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ parallel: 4, maxQueue: 64, headersTimeoutMs: 2000, idleTimeoutMs: 2000 });
});
afterAll(async () => {
  await server.app.shutdown();
});

/**
 * How a garbage case may end: a gRPC status, an HTTP answer, a closed connection, GOAWAY for a
 * client past the stream limit. Not: INTERNAL or HTTP 500 (garbage is the client's fault, not the
 * server's), a stream reset, UNKNOWN, a hang.
 */
const ALLOWED = [
  // NOT_FOUND: a mutated request that names a variant (field 12 of Generate, 3 of Tokenize) no catalog has.
  /^grpc (OK|INVALID_ARGUMENT|OUT_OF_RANGE|RESOURCE_EXHAUSTED|UNIMPLEMENTED|DEADLINE_EXCEEDED|NOT_FOUND)$/,
  /^http (200|400|404|415)( .+)?$/,
  // GET / with a body it does not need: the playground's page.
  /^tcp (closed|answered (200|400))$/,
  // Streams past the announced limit: that client's connection ends with GOAWAY.
  /^h2 GOAWAY$/,
  // Slow and idle connections, closed by the server: slowloris at the headers timeout (408 or
  // nothing), one that sent nothing after 10 s, an idle HTTP/2 one after the idle timeout.
  /^slowloris closed( after 408)?$/,
  /^silent closed$/,
  /^idle-h2 GOAWAY$/,
];

describe("the fuzzer's run (a short one; `npm run fuzz -- --cases 5000` for the full)", () => {
  it("every case ends with a code within its time, good calls keep working, nothing is left running", async () => {
    const report = await runFuzz(server.address, 600, 7, undefined, 20_000);
    expect(report.hung).toBe(0);
    expect(report.serverFaults).toBe(0);
    expect(report.goodCalls).toBe(12);
    expect(report.goodCallsOk).toBe(12);
    const seen = Object.values(report.outcomes).flatMap((byOutcome) => Object.keys(byOutcome));
    expect(seen.filter((o) => !ALLOWED.some((pattern) => pattern.test(o)))).toEqual([]);
    const total = Object.values(report.outcomes).reduce(
      (n, byOutcome) => n + Object.values(byOutcome).reduce((a, b) => a + b, 0),
      0,
    );
    expect(total).toBe(600);
    expect(Object.values(report.outcomes["slow-or-idle"] ?? {}).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    await idle(server.baseUrl);
    expect(await sample(server.baseUrl, "airavata_num_requests_running", { variant: "tiny.q4_0" })).toBe(0);
    expect(await sample(server.baseUrl, "airavata_num_requests_waiting", { variant: "tiny.q4_0" })).toBe(0);
  });
});
