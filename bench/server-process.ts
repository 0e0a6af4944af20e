/**
 * The service as the benches run it: `src/main.ts` in a process of its own,
 * resolved once its model is loaded.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { AiravataClient, GenerateInit } from "../clients/grpc-client.js";
import { grpcFrame } from "../harness/raw-grpc.js";
import { GenerateRequestSchema, GenerateResponseSchema } from "../src/gen/airavata/v1/generation_pb.js";
import { postOnItsOwnConnection } from "./http-post.js";
import type { StreamTrace } from "./stream-stats.js";

export interface BenchServer {
  child: ChildProcess;
  port: number;
  /** The "model loaded" log line: backend, devices, GPU layers, load time, … */
  loaded: Record<string, unknown>;
  stop(): Promise<void>;
}

/** `cwd`: the checkout whose `src/main.ts` runs (another commit's worktree, to compare with). */
export async function startBenchServer(args: string[], env: Record<string, string> = {}, cwd?: string): Promise<BenchServer> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
    cwd,
  });
  // Never outlive the bench, even when it fails.
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  child.once("exit", () => process.off("exit", kill));
  const { port, loaded } = await new Promise<{ port: number; loaded: Record<string, unknown> }>((resolve, reject) => {
    let listening = 0;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as { msg: string; port?: number; stepMs?: unknown };
      if (entry.msg === "listening") listening = entry.port!;
      if (entry.msg.startsWith("model loaded")) resolve({ port: listening, loaded: entry });
      // The thread tuner's choices, as they happen (with --threads auto).
      if (entry.msg.startsWith("decode threads")) process.stderr.write(`service: ${entry.msg} ${JSON.stringify(entry.stepMs)}\n`);
    });
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  return {
    child,
    port,
    loaded,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/**
 * One greedy stream from the service (`prompt`: one user message, or the whole conversation),
 * each token's arrival time recorded, with its text and trailers; `variant` names a loaded
 * variant (empty: as the server routes).
 */
export async function serviceTrace(
  client: AiravataClient,
  prompt: string | { role: string; content: string }[],
  tokens: number,
  variant = "",
): Promise<StreamTrace & { text: string; trailers: Record<string, string> }> {
  const trace: StreamTrace = { sentAt: performance.now(), tokenTimes: [] };
  const outcome = await client.generate({ ...greedyRequest(prompt, tokens), variant }, (r) => {
    const now = performance.now();
    for (let k = 0; k < r.tokenIds.length; k++) trace.tokenTimes.push(now);
  });
  if (outcome.codeName !== "OK") throw new Error(`${outcome.codeName}: ${outcome.message}`);
  return { ...trace, text: outcome.text, trailers: outcome.trailers };
}

/** The benches' greedy Generate request: one user message, or the whole conversation. */
function greedyRequest(prompt: string | { role: string; content: string }[], tokens: number): GenerateInit {
  return {
    ...(typeof prompt === "string" ? { prompt } : { messages: prompt }),
    maxNewTokens: tokens,
    temperature: 0,
    repeatPenalty: 1,
  };
}

/**
 * The same greedy stream over the Connect protocol on HTTP/1.1, through
 * `llamaServerTrace`'s client (`postOnItsOwnConnection`), so that a
 * comparison of the two servers is not one of two client libraries (grpc-js
 * over HTTP/2 costs the client more per call). The envelopes are gRPC's
 * frames; the trailers come in the end-stream message.
 */
export async function connectTrace(
  port: number,
  prompt: string | { role: string; content: string }[],
  tokens: number,
): Promise<StreamTrace & { text: string; trailers: Record<string, string> }> {
  const body = grpcFrame(
    Buffer.from(toBinary(GenerateRequestSchema, create(GenerateRequestSchema, greedyRequest(prompt, tokens)))),
  );
  const trace: StreamTrace & { text: string; trailers: Record<string, string> } = {
    sentAt: performance.now(),
    tokenTimes: [],
    text: "",
    trailers: {},
  };
  const response = await postOnItsOwnConnection(
    port,
    "/airavata.v1.GenerationService/Generate",
    { "content-type": "application/connect+proto", "connect-protocol-version": "1" },
    body,
  );
  if (response.statusCode !== 200) throw new Error(`the service answered HTTP ${response.statusCode}`);
  let buffered = Buffer.alloc(0);
  let ended = false;
  for await (const chunk of response) {
    const now = performance.now();
    buffered = Buffer.concat([buffered, chunk as Buffer]);
    while (buffered.length >= 5 && buffered.length >= 5 + buffered.readUInt32BE(1)) {
      const flags = buffered[0]!;
      const payload = buffered.subarray(5, 5 + buffered.readUInt32BE(1));
      buffered = buffered.subarray(5 + payload.length);
      if ((flags & 0x02) !== 0) {
        const end = JSON.parse(payload.toString("utf8")) as {
          error?: { code: string; message?: string };
          metadata?: Record<string, string[]>;
        };
        if (end.error) throw new Error(`${end.error.code}: ${end.error.message ?? ""}`);
        for (const [key, values] of Object.entries(end.metadata ?? {})) trace.trailers[key] = values.join(", ");
        ended = true;
        continue;
      }
      const r = fromBinary(GenerateResponseSchema, payload);
      trace.text += r.text;
      for (let k = 0; k < r.tokenIds.length; k++) trace.tokenTimes.push(now);
    }
  }
  if (!ended) throw new Error("the Connect stream ended without its end-stream message");
  return trace;
}

/** The service's engine-hop histogram (sum, count) from /metrics. */
export async function hopSeconds(port: number): Promise<{ sum: number; count: number }> {
  const scraped = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const sample = (name: string) => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, "m").exec(scraped)?.[1] ?? 0);
  return { sum: sample("airavata_engine_hop_seconds_sum"), count: sample("airavata_engine_hop_seconds_count") };
}

/**
 * The same greedy stream through the OpenAI-compatible surface: a streamed
 * chat completion over HTTP/1.1 (Node's fetch), each server-sent chunk's
 * arrival recorded as one token's. A chunk carries no token count, and under
 * the default stream interval one carries several: the count is made up to
 * the usage's at the end, so read this trace's TTFT and tokens/s, not its
 * inter-token times.
 */
export async function openAiTrace(port: number, prompt: string, tokens: number): Promise<StreamTrace & { text: string }> {
  const trace: StreamTrace = { sentAt: performance.now(), tokenTimes: [] };
  const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "airavata",
      messages: [{ role: "user", content: prompt }],
      max_tokens: tokens,
      temperature: 0,
      repeat_penalty: 1,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let text = "";
  let buffer = "";
  let completion = 0;
  const decoder = new TextDecoder();
  const reader = res.body.getReader();
  for (;;) {
    const { value: bytes, done } = await reader.read();
    if (done) break;
    const now = performance.now();
    buffer += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const data = buffer.slice(6, end);
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data) as {
        choices: { delta: { content?: string }; finish_reason: string | null }[];
        usage?: { completion_tokens: number };
      };
      if (chunk.usage) completion = chunk.usage.completion_tokens;
      const choice = chunk.choices[0];
      // The last chunk carries the finish reason (and any text held back); a chunk with a token otherwise.
      if (choice && (choice.finish_reason === null || choice.delta.content)) trace.tokenTimes.push(now);
      text += choice?.delta.content ?? "";
    }
  }
  const last = trace.tokenTimes.at(-1) ?? performance.now();
  while (trace.tokenTimes.length < completion) trace.tokenTimes.push(last);
  trace.tokenTimes.length = Math.min(trace.tokenTimes.length, completion);
  return { ...trace, text };
}
