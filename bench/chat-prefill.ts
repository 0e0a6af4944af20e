/**
 * Where a cached chat turn's time to first token goes, against llama-server:
 * the same conversation (the service's greedy answers, which llama-server
 * also gives) sent to both, one slot each, prompt cache on; each turn first
 * asks for one token (the measurement), then for the answer (which both then
 * hold in their cache). Per turn: the service's prefill from its trailers and
 * its TTFT as the client saw it, against llama-server's `timings.prompt_ms`
 * and its request's wall time, with the prompt tokens each evaluated. The
 * service's measured call alternates by turn between the project's grpc-js
 * client (HTTP/2) and the Connect protocol over HTTP/1.1 with Node's
 * `http.request`, the client llama-server's call uses.
 *
 *   npx tsx bench/chat-prefill.ts [--model models/synthetic/small.Q4_K_M.gguf] [--turns 10] [--threads 1]
 *     [--out bench/results/chat-prefill]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { AiravataClient } from "../clients/grpc-client.js";
import type { ChatTurn } from "../src/generation.js";
import { SYSTEM_PROMPT } from "./chat.js";
import { llamaServerBinary, llamaServerTrace, startLlamaServer } from "./llama-server.js";
import { connectTrace, startBenchServer } from "./server-process.js";

const opts = new Command("chat-prefill")
  .option("--model <path>", "GGUF file", "models/synthetic/small.Q4_K_M.gguf")
  .option("--turns <n>", "turns of the conversation", "10")
  .option("--threads <n>", "threads for both", "1")
  .option("--answer-tokens <n>", "tokens of each answer", "24")
  .option("--out <dir>", "result folder", "bench/results/chat-prefill")
  .parse()
  .opts<{ model: string; turns: string; threads: string; answerTokens: string; out: string }>();

const threads = Number(opts.threads);
const binary = await llamaServerBinary((line) => console.error(line));
if (!binary) throw new Error("llama-server could not be built");
const service = await startBenchServer([
  "--model",
  opts.model,
  "--threads",
  opts.threads,
  "--parallel",
  "1",
  "--context-size",
  "2048",
]);
const peer = await startLlamaServer(binary, { model: opts.model, threads, slots: 1, contextSize: 2048 });
const client = new AiravataClient(`127.0.0.1:${service.port}`);

type Client = "grpc-js" | "connect-h1";
const rows: {
  turn: number;
  service: { client: Client; prefillMs: number; clientTtftMs: number; evaluated: number; promptTokens: number };
  llamaServer: { promptMs: number; wallMs: number; evaluated: number };
  sameAnswer: boolean;
}[] = [];
try {
  const history: ChatTurn[] = [{ role: "system", content: SYSTEM_PROMPT }];
  for (let turn = 1; turn <= Number(opts.turns); turn++) {
    history.push({ role: "user", content: `Question ${turn}: भारत की राजधानी क्या है?` });
    const use: Client = turn % 2 === 1 ? "grpc-js" : "connect-h1";
    const sent = performance.now();
    let first = 0;
    let trailers: Record<string, string>;
    if (use === "grpc-js") {
      const one = await client.generate({ messages: history, maxNewTokens: 1, temperature: 0, repeatPenalty: 1 }, () => {
        first ||= performance.now();
      });
      trailers = one.trailers;
    } else {
      const one = await connectTrace(service.port, history, 1);
      first = one.tokenTimes[0]!;
      trailers = one.trailers;
    }
    const m = {
      prefillMs: Number(trailers["airavata-prefill-ms"]),
      promptTokens: Number(trailers["airavata-prompt-tokens"]),
      cachedPromptTokens: Number(trailers["airavata-cached-prompt-tokens"]),
    };
    const peerOne = await llamaServerTrace(peer.port, history, 1, { cachePrompt: true });
    const wallMs = performance.now() - peerOne.sentAt;
    // The answers, so that both hold the whole turn in their cache for the next.
    const answer = await client.generate({
      messages: history,
      maxNewTokens: Number(opts.answerTokens),
      temperature: 0,
      repeatPenalty: 1,
    });
    const peerAnswer = await llamaServerTrace(peer.port, history, Number(opts.answerTokens), { cachePrompt: true });
    rows.push({
      turn,
      service: {
        client: use,
        prefillMs: m.prefillMs,
        clientTtftMs: first - sent,
        evaluated: m.promptTokens - m.cachedPromptTokens,
        promptTokens: m.promptTokens,
      },
      llamaServer: { promptMs: peerOne.promptMs!, wallMs, evaluated: peerOne.promptEvaluated! },
      sameAnswer: peerAnswer.text.trim() === answer.text.trim(),
    });
    history.push({ role: "assistant", content: answer.text });
  }
} finally {
  client.close();
  await service.stop();
  await peer.stop();
}

const f = (n: number) => n.toFixed(1);
const later = rows.filter((r) => r.turn > 1);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const outside = (rs: typeof rows) => f(sum(rs.map((r) => r.service.clientTtftMs - r.service.prefillMs)) / rs.length);
const md = [
  "# A cached chat turn's first token: the service against llama-server",
  "",
  `- date: ${new Date().toISOString()}; machine: ${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores`,
  `- model: ${opts.model}; ${threads} thread(s); 1 slot of 2048 tokens each; a ~1,000-token system prompt; ${opts.answerTokens}-token answers`,
  `- command: \`npx tsx bench/chat-prefill.ts --model ${opts.model} --turns ${opts.turns} --threads ${opts.threads}\``,
  "",
  "| turn | service's client | prompt tokens | evaluated: service / llama-server | service prefill (trailer) ms | llama-server prompt_ms | service TTFT at the client ms | llama-server request wall ms | same answer |",
  "|--:|---|--:|--:|--:|--:|--:|--:|:-:|",
  ...rows.map(
    (r) =>
      `| ${r.turn} | ${r.service.client} | ${r.service.promptTokens} | ${r.service.evaluated} / ${r.llamaServer.evaluated} | ${f(r.service.prefillMs)} | ${f(r.llamaServer.promptMs)} | ${f(r.service.clientTtftMs)} | ${f(r.llamaServer.wallMs)} | ${r.sameAnswer ? "yes" : "no"} |`,
  ),
  "",
  `Turns 2–${rows.length}, summed: service prefill ${f(sum(later.map((r) => r.service.prefillMs)))} ms against llama-server's prompt_ms ${f(sum(later.map((r) => r.llamaServer.promptMs)))} (${(sum(later.map((r) => r.service.prefillMs)) / sum(later.map((r) => r.llamaServer.promptMs))).toFixed(3)}×); outside the decode, per turn (mean): ${(["grpc-js", "connect-h1"] as const).map((c) => `the service with ${c} ${outside(later.filter((r) => r.service.client === c))} ms`).join(", ")} (client TTFT − prefill), llama-server ${f(sum(later.map((r) => r.llamaServer.wallMs - r.llamaServer.promptMs)) / later.length)} ms (wall − prompt_ms, one token generated).`,
  "",
].join("\n");
mkdirSync(opts.out, { recursive: true });
writeFileSync(join(opts.out, "chat-prefill.json"), `${JSON.stringify(rows, null, 2)}\n`);
writeFileSync(join(opts.out, "chat-prefill.md"), md);
console.log(md);
