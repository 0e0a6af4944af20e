/**
 * `npm run bench -- --scenario chat`: conversations of several turns behind
 * one long system prompt, each turn sending the whole conversation again, as
 * chat clients do. Per turn, time to first token and the turn's total time,
 * for the service with its prefix cache, the service with `--prefix-cache
 * off`, and llama-server with its prompt cache (on, as it comes), on the same
 * GGUF, threads and slots, in one run, rounds rotating the order.
 */
import os from "node:os";
import { AiravataClient } from "../clients/grpc-client.js";
import type { ChatTurn, FlashAttention } from "../src/generation.js";
import { llamaServerBinary, llamaServerTrace, startLlamaServer } from "./llama-server.js";
import { writeReport } from "./report-files.js";
import { serviceTrace, startBenchServer } from "./server-process.js";
import { median, percentiles } from "./stream-stats.js";

export interface ChatScenarioOptions {
  model: string;
  threads: number;
  /** Conversations at once, one run per count. */
  levels: number[];
  turns: number;
  /** New tokens a turn. */
  tokens: number;
  rounds: number;
  /** Which of `service`, `cache-off`, `llama-server` to run (default: all three). */
  targets?: string[];
  /** llama.cpp's flash attention, for every target alike. */
  flashAttention: FlashAttention;
  out: string;
  command: string;
}

const TARGETS = ["service", "service, --prefix-cache off", "llama-server"] as const;
type Target = (typeof TARGETS)[number];
/** The names `--targets` takes for them. */
const TARGET_NAMES: Record<string, Target> = {
  service: "service",
  "cache-off": "service, --prefix-cache off",
  "llama-server": "llama-server",
};

/** One turn as the client saw it: ms from sending to the first token and to the last. */
interface Turn {
  ttftMs: number;
  totalMs: number;
  /** Tokens the turn streamed. */
  tokens: number;
  /** Prompt tokens evaluated (not taken from a cache). */
  evaluatedTokens?: number;
}

// About 1,000 tokens of the synthetic models' vocabulary: the same for every conversation.
export const SYSTEM_PROMPT = `You are a helpful assistant for Hindi and English speakers. ${"Answer clearly, briefly and politely; say when you are not sure. भारत के बारे में प्रश्नों का उत्तर हिंदी में दें। ".repeat(12)}`;
const QUESTIONS = ["नमस्ते", "भारत की राजधानी क्या है?", "और बताइए", "धन्यवाद", "Tell me more"];

/** One conversation against a target: each turn sends everything so far; the answers are the target's own. */
async function converse(
  ask: (turns: ChatTurn[]) => Promise<{ text: string } & Turn>,
  conversation: number,
  turns: number,
): Promise<Turn[]> {
  const history: ChatTurn[] = [{ role: "system", content: SYSTEM_PROMPT }];
  const out: Turn[] = [];
  for (let t = 0; t < turns; t++) {
    history.push({ role: "user", content: `${QUESTIONS[t % QUESTIONS.length]} (${conversation})` });
    const { text, ...turn } = await ask(history.map((h) => ({ ...h })));
    out.push(turn);
    history.push({ role: "assistant", content: text });
  }
  return out;
}

export async function chatScenario(options: ChatScenarioOptions): Promise<void> {
  const slots = Math.max(...options.levels);
  const contextSize = 2048;
  const binary = await llamaServerBinary((line) => process.stderr.write(`${line}\n`));
  /** By target and level: per turn, the turns of every conversation and round. */
  const results = new Map<string, Turn[][]>();
  let systemTokens = 0;
  const unknown = (options.targets ?? []).filter((name) => !(name in TARGET_NAMES));
  if (unknown.length > 0)
    throw new Error(`--targets: ${unknown.join(", ")}: the chat scenario's are ${Object.keys(TARGET_NAMES).join(", ")}`);
  const targets = options.targets
    ? TARGETS.filter((t) => options.targets!.some((name) => TARGET_NAMES[name] === t))
    : [...TARGETS];
  for (let round = 0; round < options.rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
    for (const target of order) {
      for (const level of options.levels) {
        let ask: (conversation: number) => Promise<Turn[]>;
        let stop: () => Promise<void>;
        if (target === "llama-server") {
          if (binary === undefined) continue;
          const server = await startLlamaServer(binary, {
            model: options.model,
            threads: options.threads,
            slots,
            contextSize,
            flashAttention: options.flashAttention,
          });
          ask = (c) =>
            converse(
              async (turns) => {
                const trace = await llamaServerTrace(server.port, turns, options.tokens, { cachePrompt: true });
                return {
                  text: trace.text,
                  ttftMs: trace.tokenTimes[0]! - trace.sentAt,
                  totalMs: trace.tokenTimes.at(-1)! - trace.sentAt,
                  tokens: trace.tokenTimes.length,
                  evaluatedTokens: trace.promptEvaluated,
                };
              },
              c,
              options.turns,
            );
          stop = () => server.stop();
        } else {
          const server = await startBenchServer([
            "--model",
            options.model,
            "--gpu",
            "cpu",
            "--threads",
            String(options.threads),
            "--parallel",
            String(slots),
            "--context-size",
            String(contextSize),
            "--prefix-cache",
            target === "service" ? "on" : "off",
            "--flash-attention",
            options.flashAttention,
          ]);
          const client = new AiravataClient(`127.0.0.1:${server.port}`);
          systemTokens ||= (await client.tokenize(SYSTEM_PROMPT)).response?.count ?? 0;
          ask = (c) =>
            converse(
              async (turns) => {
                const trace = await serviceTrace(client, turns, options.tokens);
                return {
                  text: trace.text,
                  ttftMs: trace.tokenTimes[0]! - trace.sentAt,
                  totalMs: trace.tokenTimes.at(-1)! - trace.sentAt,
                  tokens: trace.tokenTimes.length,
                  evaluatedTokens:
                    Number(trace.trailers["airavata-prompt-tokens"]) - Number(trace.trailers["airavata-cached-prompt-tokens"]),
                };
              },
              c,
              options.turns,
            );
          stop = async () => {
            client.close();
            await server.stop();
          };
        }
        const conversations = await Promise.all(Array.from({ length: level }, (_, c) => ask(c)));
        await stop();
        const key = `${target} ${level}`;
        const byTurn = results.get(key) ?? Array.from({ length: options.turns }, () => []);
        for (const turns of conversations) turns.forEach((turn, t) => byTurn[t]!.push(turn));
        results.set(key, byTurn);
        process.stderr.write(`round ${round + 1}: ${target}, ${level} conversations done\n`);
      }
    }
  }

  const f = (n: number) => n.toFixed(0);
  const lines = [
    "# Multi-turn chat: time to first token by turn",
    "",
    `- date: ${new Date().toISOString()}`,
    `- machine: ${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, Node ${process.version}`,
    `- model: ${options.model}; ${options.threads} thread(s); ${slots} slots of ${contextSize} tokens; ${options.turns} turns of ${options.tokens} greedy tokens; ` +
      `a ${systemTokens}-token system prompt shared by every conversation; each turn sends the whole conversation; ${options.rounds} round(s); ` +
      `flash attention ${options.flashAttention} for every target`,
    `- command: \`${options.command}\``,
    "- service: the project's grpc-js client, `messages`; llama-server: `POST /completion` with the same chat-formatted text and `cache_prompt: true`",
    "",
  ];
  for (const level of options.levels) {
    lines.push(
      `${level} conversation${level === 1 ? "" : "s"} at once: TTFT p50 / p95 ms, and the turn's total ms (p50), per turn` +
        " (in brackets: the mean prompt tokens evaluated, not taken from a cache):",
      "",
      `| turn | ${TARGETS.map((t) => `${t} TTFT | ${t} total`).join(" | ")} | service ÷ llama-server TTFT | service ÷ cache off TTFT |`,
      `|---:|${TARGETS.map(() => "---:|---:|").join("")}---:|---:|`,
    );
    for (let t = 0; t < options.turns; t++) {
      const cells: string[] = [];
      const p50 = new Map<Target, number>();
      for (const target of TARGETS) {
        const turns = results.get(`${target} ${level}`)?.[t];
        if (turns === undefined || turns.length === 0) {
          cells.push("–", "–");
          continue;
        }
        const ttft = percentiles(turns.map((x) => x.ttftMs));
        p50.set(target, ttft.p50);
        const evaluated = turns.every((x) => x.evaluatedTokens !== undefined)
          ? ` [${f(turns.reduce((n, x) => n + x.evaluatedTokens!, 0) / turns.length)}]`
          : "";
        cells.push(`${f(ttft.p50)} / ${f(ttft.p95)}${evaluated}`, f(median(turns.map((x) => x.totalMs))));
      }
      const ratio = (a: Target, b: Target) => (p50.has(a) && p50.has(b) ? (p50.get(a)! / p50.get(b)!).toFixed(2) : "–");
      lines.push(
        `| ${t + 1} | ${cells.join(" | ")} | ${ratio("service", "llama-server")} | ${ratio("service", "service, --prefix-cache off")} |`,
      );
    }
    // Decode speed after the first token, where the cache must cost nothing: (tokens - 1) / (total - TTFT).
    const decode = targets.map((target) => {
      const later = (results.get(`${target} ${level}`) ?? []).slice(1).flat();
      const speeds = later.filter((x) => x.tokens > 1).map((x) => ((x.tokens - 1) * 1000) / (x.totalMs - x.ttftMs));
      return `${target} ${speeds.length > 0 ? median(speeds).toFixed(1) : "–"}`;
    });
    lines.push("", `Decode tokens/s per conversation on turns 2–${options.turns} (median): ${decode.join("; ")}.`, "");
  }
  writeReport(options.out, "chat", { options, systemTokens, results: Object.fromEntries(results) }, `${lines.join("\n")}\n`);
}
