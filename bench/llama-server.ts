/**
 * llama.cpp's own server as a bench target: built from the llama.cpp source
 * that node-llama-cpp's package carries (the same commit the service runs),
 * running the engine's own prebuilt CPU kernels (see `src/quantize/llama-tools.ts`),
 * started on the same GGUF with the same threads, slots and context per slot,
 * and called over its streaming HTTP API with the same chat-formatted prompts.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { freePorts } from "../harness/free-ports.js";
import { formatAiravataChat } from "../src/engine/child/chat-format.js";
import type { ChatTurn, FlashAttention } from "../src/generation.js";
import { ensureLlamaTool, loadedCpuVariant } from "../src/quantize/llama-tools.js";
import { postOnItsOwnConnection } from "./http-post.js";
import type { StreamTrace } from "./stream-stats.js";

export interface LlamaServer {
  port: number;
  /** The CPU backend variant it loaded ("sapphirerapids", "zen4", …). */
  cpuVariant: string | undefined;
  stop(): Promise<void>;
}

/**
 * The llama-server binary, building it on first use (minutes, then cached);
 * `undefined` with the reason printed when it cannot be built here (no
 * compiler, no cmake), so the rest of the bench still runs.
 */
export async function llamaServerBinary(log: (line: string) => void): Promise<string | undefined> {
  try {
    let last = 0;
    return await ensureLlamaTool("llama-server", {
      onProgress: (line) => {
        // One line every few seconds is enough to show the build is alive.
        if (performance.now() - last > 5000 || !line.startsWith("[")) {
          last = performance.now();
          log(line);
        }
      },
    });
  } catch (error) {
    log(`llama-server is skipped: ${(error as Error).message}`);
    return undefined;
  }
}

export interface LlamaServerOptions {
  model: string;
  threads: number;
  slots: number;
  /** Tokens per slot, as the service's --context-size. */
  contextSize: number;
  /** Layers on the GPU (0, the default: the CPU bench). */
  gpuLayers?: number;
  /** Its environment (the GPU run adds where cuBLAS is). */
  env?: NodeJS.ProcessEnv;
  /** `--flash-attn`; unset: llama-server's own default (auto: on wherever the backend has it). */
  flashAttention?: FlashAttention;
}

export async function startLlamaServer(binary: string, options: LlamaServerOptions): Promise<LlamaServer> {
  const port = (await freePorts(1))[0]!;
  const args = [
    ["--model", options.model],
    ["--host", "127.0.0.1"],
    ["--port", String(port)],
    ["--threads", String(options.threads)],
    ["--threads-batch", String(options.threads)],
    ["--parallel", String(options.slots)],
    ["--ctx-size", String(options.contextSize * options.slots)],
    ["--n-gpu-layers", String(options.gpuLayers ?? 0)],
    ["--cont-batching"],
    ["--no-webui"],
    options.flashAttention ? ["--flash-attn", options.flashAttention] : [],
  ].flat();
  const child: ChildProcess = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"], env: options.env });
  // Never outlive the bench, even when it fails.
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  child.once("exit", () => process.off("exit", kill));
  let stderr = "";
  child.stderr!.on("data", (data: Buffer) => (stderr = (stderr + data.toString()).slice(-4000)));
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code) => reject(new Error(`llama-server exited with ${code}:\n${stderr}`))),
  );
  const deadline = performance.now() + 60_000;
  for (;;) {
    if (performance.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`llama-server did not become healthy in 60 s:\n${stderr}`);
    }
    const healthy = await Promise.race([
      fetch(`http://127.0.0.1:${port}/health`).then(
        (r) => r.ok,
        () => false,
      ),
      exited,
    ]);
    if (healthy) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    cpuVariant: loadedCpuVariant(child.pid!),
    stop: async () => {
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    },
  };
}

/**
 * One streamed completion, each token's arrival time recorded (token ids come
 * with every event), and its text. Greedy, a fixed number of tokens (EOS
 * ignored, as the service's runs never stop early on the synthetic model's
 * chat script). `content` is one user message, or the whole conversation. By
 * default no prompt cache: every request evaluates its whole prompt, as the
 * service does with `--prefix-cache off`; `cachePrompt` turns llama-server's on.
 */
export async function llamaServerTrace(
  port: number,
  content: string | ChatTurn[],
  tokens: number,
  { cachePrompt = false } = {},
): Promise<StreamTrace & { text: string; promptEvaluated?: number; promptMs?: number }> {
  const trace: StreamTrace & { text: string; promptEvaluated?: number; promptMs?: number } = {
    sentAt: performance.now(),
    tokenTimes: [],
    text: "",
  };
  const body = JSON.stringify({
    prompt: formatAiravataChat(typeof content === "string" ? [{ role: "user", content }] : content),
    n_predict: tokens,
    temperature: 0,
    repeat_penalty: 1,
    ignore_eos: true,
    cache_prompt: cachePrompt,
    stream: true,
  });
  const response = await postOnItsOwnConnection(port, "/completion", { "content-type": "application/json" }, body);
  if (response.statusCode !== 200) throw new Error(`llama-server answered ${response.statusCode}`);
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of response) {
    const now = performance.now();
    buffered += decoder.decode(chunk as Buffer, { stream: true });
    const events = buffered.split("\n\n");
    buffered = events.pop()!;
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (!data.startsWith("{")) continue;
      // `tokens_predicted` counts every token so far (the ids of tokens that end inside a character are
      // left out of an event's `tokens`), so count by the running total.
      const {
        tokens_predicted: predicted,
        content: text = "",
        timings,
      } = JSON.parse(data) as {
        tokens_predicted?: number;
        content?: string;
        /** On the last event: `prompt_n`, the prompt tokens it evaluated (not taken from its cache), in `prompt_ms`. */
        timings?: { prompt_n?: number; prompt_ms?: number };
      };
      trace.text += text;
      if (timings?.prompt_n !== undefined) trace.promptEvaluated = timings.prompt_n;
      if (timings?.prompt_ms !== undefined) trace.promptMs = timings.prompt_ms;
      while (predicted !== undefined && trace.tokenTimes.length < predicted) trace.tokenTimes.push(now);
    }
  }
  return trace;
}
