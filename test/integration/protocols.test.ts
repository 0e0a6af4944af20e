import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { FinishReason } from "../../src/gen/airavata/v1/generation_pb.js";
import { generateOver, type ProtocolName } from "../helpers/connect-clients.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
const REQUEST = { prompt: "भारत की राजधानी क्या है?", maxNewTokens: 48, temperature: 0, seed: 7 };
// The synthetic model's chat script (src/synthetic/model.ts), greedy.
const EXPECTED_START = "नमस्ते! मैं एक छोटा परीक्षण मॉडल हूँ। I am a small test model for airavata-serve. ॐ शांति";

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.app.shutdown();
});

function checkTrailers(get: (name: string) => string | undefined, streamedTokens: number) {
  expect(get("airavata-variant")).toBe("tiny.q4_0");
  expect(Number(get("airavata-generated-tokens"))).toBe(streamedTokens);
  expect(Number(get("airavata-prompt-tokens"))).toBeGreaterThan(5);
  const ttft = Number(get("airavata-ttft-ms"));
  const total = Number(get("airavata-total-ms"));
  expect(ttft).toBeGreaterThan(0);
  expect(ttft).toBeLessThanOrEqual(total);
  expect(Number(get("airavata-queue-ms"))).toBeLessThanOrEqual(ttft);
  expect(Number(get("airavata-prefill-ms"))).toBeGreaterThan(0);
  expect(Number(get("airavata-decode-tokens-per-second"))).toBeGreaterThan(0);
  expect(get("airavata-finish-reason")).toBe("length");
  expect(get("airavata-metrics-bin")).toBeTruthy();
}

describe("one address, every protocol", () => {
  it("streams the same text over grpc-js with every trailer", async () => {
    const client = new AiravataClient(server.address);
    const chunks: string[] = [];
    const outcome = await client.generate(REQUEST, (r) => chunks.push(r.text));
    client.close();
    expect(outcome.codeName).toBe("OK");
    expect(outcome.text.startsWith(EXPECTED_START)).toBe(true);
    expect(chunks.length).toBeGreaterThan(10);
    const streamed = outcome.responses.reduce((n, r) => n + r.tokenIds.length, 0);
    expect(streamed).toBe(48);
    checkTrailers((k) => outcome.trailers[k], streamed);
    // The -bin trailer and the last message carry the same metrics as the plain trailers.
    expect(outcome.metrics?.generatedTokens).toBe(48);
    expect(outcome.metrics?.variant).toBe("tiny.q4_0");
    expect(outcome.metrics?.finishReason).toBe(FinishReason.LENGTH);
    const last = outcome.responses.at(-1)!;
    expect(last.finishReason).toBe(FinishReason.LENGTH);
    expect(last.metrics?.totalMs).toBeCloseTo(Number(outcome.trailers["airavata-total-ms"]), 1);
  });

  const protocols: ProtocolName[] = ["connect-h1", "connect-h2", "grpc-web-h1", "grpc-h2"];
  it.each(protocols)("streams the same text over %s", async (protocol) => {
    const reference = await new AiravataClient(server.address).generate(REQUEST);
    const outcome = await generateOver(protocol, server.baseUrl, REQUEST);
    expect(outcome.code).toBe("ok");
    expect(outcome.text).toBe(reference.text);
    expect(outcome.responses.length).toBeGreaterThan(10);
    const streamed = outcome.responses.reduce((n, r) => n + r.tokenIds.length, 0);
    checkTrailers((k) => outcome.trailers.get(k) ?? undefined, streamed);
    expect(outcome.headers.get("x-request-id")).toBeTruthy();
  });

  it.each(["grpc", "grpcweb", "connect"])("answers buf curl over %s, through reflection", async (protocol) => {
    const args = [
      "curl",
      "--protocol",
      protocol,
      "--data",
      JSON.stringify({ prompt: REQUEST.prompt, max_new_tokens: 48, temperature: 0, seed: 7 }),
    ];
    if (protocol === "grpc") args.push("--http2-prior-knowledge");
    args.push(`${server.baseUrl}/airavata.v1.GenerationService/Generate`);
    const { stdout } = await exec(`${ROOT}/node_modules/.bin/buf`, args);
    const messages = JSON.parse(`[${stdout.replace(/}\s*{/g, "},{")}]`) as { text?: string; finishReason?: string }[];
    expect(
      messages
        .map((m) => m.text ?? "")
        .join("")
        .startsWith(EXPECTED_START),
    ).toBe(true);
    expect(messages.at(-1)?.finishReason).toBe("FINISH_REASON_LENGTH");
  });

  it("tokenizes with the active variant's tokenizer", async () => {
    const client = new AiravataClient(server.address);
    const outcome = await client.tokenize("नमस्ते ॐ");
    client.close();
    expect(outcome.codeName).toBe("OK");
    // "▁नमस्ते" is one piece; " " and ॐ's three bytes follow (ॐ has no piece).
    expect(outcome.response?.count).toBe(5);
    expect(outcome.response?.variant).toBe("tiny.q4_0");
  });

  it("serves Prometheus metrics on the same port", async () => {
    const response = await fetch(`${server.baseUrl}/metrics`);
    expect(response.status).toBe(200);
    const text = await response.text();
    // api: which surface served the calls (these came over gRPC, gRPC-Web and Connect).
    expect(text).toMatch(/airavata_requests_total\{variant="tiny.q4_0",api="airavata",code="OK",finish_reason="length"\} \d+/);
    expect(text).toContain("airavata_time_to_first_token_seconds_bucket");
  });
});
