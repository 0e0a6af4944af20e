/**
 * Configuration: the only reader of process.env and argv. Every setting is a
 * flag and an `AIRAVATA_*` environment variable (the flag wins), validated at
 * start; a bad value stops the process with one line that names it.
 */
import { existsSync, readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import {
  AUTO_STREAM_INTERVAL,
  FLASH_ATTENTION,
  type FlashAttention,
  parseStreamInterval,
  type StreamInterval,
  THREAD_POOL,
  type ThreadPool,
} from "./generation.js";

export interface Config {
  /** A GGUF file to serve instead of a catalog variant. */
  modelPath: string | undefined;
  /** Catalog id to serve when no modelPath is given. */
  variant: string;
  /** Catalog ids to try, in order, when the variant cannot load. */
  fallback: string[];
  /**
   * Several variants to load at start, each with its routing weight (instead
   * of `variant`); undefined: `variant` alone.
   */
  variants: { id: string; weight: number }[] | undefined;
  modelsDir: string;
  manifestPath: string | undefined;
  /** Bearer token for AdminService; undefined disables it. */
  adminToken: string | undefined;
  /** Bytes the loaded variants may use together during a swap; undefined: the device's free memory. */
  memoryBudget: number | undefined;
  host: string;
  port: number;
  gpu: "auto" | "cuda" | "vulkan" | "cpu";
  /** Decode threads, or "auto": the cores less one to start with, then measured while serving. */
  threads: number | "auto";
  /** Tokens each request may use (prompt + generation). */
  contextSize: number;
  /** Parallel sequences (slots); "auto" chooses by backend. */
  parallel: number | "auto";
  batchSize: number;
  /** How many waiting requests decode together: by measured step cost, or all of them. */
  batching: "measured" | "full";
  /** How streamed messages after the first are paced: N tokens each, or at most one every T ms. */
  streamInterval: StreamInterval;
  /** Slots keep their KV cells after a call; a new call reuses the longest shared prompt prefix. */
  prefixCache: boolean;
  /** llama.cpp's flash attention: on, off, or its own choice by backend (auto). */
  flashAttention: FlashAttention;
  /** ggml's decode threads: a pool kept between decodes, or started by each. */
  threadPool: ThreadPool;
  /** Also publish waiting, running and KV use under vLLM's metric names (for gateways that read those). */
  vllmMetrics: boolean;
  maxQueue: number;
  maxMessageBytes: number;
  tls: { cert: Buffer; key: Buffer } | undefined;
  corsOrigins: string[];
  gracePeriodMs: number;
  /** The least a Generate call with a deadline is ended ahead of it (plus the connection's round trip). */
  deadlineMarginMs: number;
  /** Connection limits: HTTP/2 streams per connection, connections in all, HTTP/1.1 header time. */
  maxStreamsPerConnection: number;
  maxConnections: number;
  maxConnectionsPerClient: number;
  idleTimeoutMs: number;
  headersTimeoutMs: number;
  /** An engine process that answers no ping for this long is killed and restarted. */
  engineWatchdogMs: number;
  /** Engine failures within five minutes beyond which it is not restarted again (a crash loop). */
  engineMaxRestarts: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
}

function integer(min: number, max: number) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}.`);
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}.`);
    return n;
  };
}

function streamInterval(value: string): StreamInterval {
  const interval = parseStreamInterval(value);
  const valid =
    interval !== undefined &&
    ("ms" in interval
      ? interval.ms >= 1 && interval.ms <= 1000
      : interval.tokens >= 1 &&
        interval.tokens <= 256 &&
        (interval.holdMs === undefined || (interval.holdMs >= 1 && interval.holdMs <= 1000)));
  if (!valid)
    throw new InvalidArgumentError(
      "expected auto, a token count from 1 to 256 (4), a count with a hold time from 1ms to 1000ms (4/50ms) or a time (20ms).",
    );
  return interval;
}

/** "8GB", "512 MiB", "1073741824" → bytes. */
export function parseBytes(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$/i.exec(value);
  if (!match) throw new InvalidArgumentError("expected a size such as 8GB, 512MiB or a number of bytes.");
  const units: Record<string, number> = {
    b: 1,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    tb: 1e12,
    kib: 2 ** 10,
    mib: 2 ** 20,
    gib: 2 ** 30,
    tib: 2 ** 40,
  };
  return Math.round(Number(match[1]) * units[(match[2] ?? "b").toLowerCase()]!);
}

function readable(value: string): string {
  if (value === "") return value;
  if (!existsSync(value)) throw new InvalidArgumentError(`no file at ${value}.`);
  return value;
}

export function buildCommand(): Command {
  return new Command("airavata-serve")
    .description("Serve Airavata GGUF models over gRPC, gRPC-Web and Connect on one port")
    .addOption(
      new Option("--model <path>", "a GGUF file to serve (instead of --variant)").env("AIRAVATA_MODEL").argParser(readable),
    )
    .addOption(
      new Option("--variant <id>", "catalog variant to serve, downloaded on first use").env("AIRAVATA_VARIANT").default("q4_k_m"),
    )
    .addOption(
      new Option(
        "--variants <ids>",
        "several variants to load at start, comma-separated, each with an optional routing weight (q4_k_m=90,q8_0=10); " +
          "without weights the first takes every call that names no variant",
      ).env("AIRAVATA_VARIANTS"),
    )
    .addOption(
      new Option("--fallback <ids>", "comma-separated variants to try in order if --variant cannot load")
        .env("AIRAVATA_FALLBACK")
        .default(""),
    )
    .addOption(
      new Option("--models-dir <dir>", "folder of GGUF files and downloads").env("AIRAVATA_MODELS_DIR").default("models"),
    )
    .addOption(
      new Option("--manifest <path>", "JSON file of extra variants (id, source, description, sha256)")
        .env("AIRAVATA_MANIFEST")
        .argParser(readable),
    )
    .addOption(
      new Option("--admin-token-file <path>", "file holding the admin bearer token (or set AIRAVATA_ADMIN_TOKEN)")
        .env("AIRAVATA_ADMIN_TOKEN_FILE")
        .argParser(readable),
    )
    .addOption(
      new Option(
        "--memory-budget <size>",
        "memory the variants may use together during a swap (default: what the device has free)",
      )
        .env("AIRAVATA_MEMORY_BUDGET")
        .argParser(parseBytes),
    )
    .addOption(new Option("--host <host>", "address to listen on").env("AIRAVATA_HOST").default("127.0.0.1"))
    .addOption(
      new Option("--port <port>", "port for every protocol (0: any free port)")
        .env("AIRAVATA_PORT")
        .default(50051)
        .argParser(integer(0, 65535)),
    )
    .addOption(
      new Option("--gpu <backend>", "compute backend")
        .env("AIRAVATA_GPU")
        .choices(["auto", "cuda", "vulkan", "cpu"])
        .default("auto"),
    )
    .addOption(
      new Option(
        "--threads <n>",
        'CPU threads for decoding, or "auto": the cores less one to start with, then the faster of that and all the cores, measured while serving',
      )
        .env("AIRAVATA_THREADS")
        .default("auto")
        .argParser((v) => (v === "auto" ? v : integer(1, 1024)(v))),
    )
    .addOption(
      new Option("--context-size <tokens>", "tokens per request, prompt and generation together")
        .env("AIRAVATA_CONTEXT_SIZE")
        .default(2048)
        .argParser(integer(64, 1 << 20)),
    )
    .addOption(
      new Option("--parallel <n>", 'requests decoded together (slots), or "auto": 4 on CPU, 8 on GPU')
        .env("AIRAVATA_PARALLEL")
        .default("auto")
        .argParser((v) => (v === "auto" ? v : integer(1, 256)(v))),
    )
    .addOption(
      new Option("--batch-size <tokens>", "tokens per decode batch")
        .env("AIRAVATA_BATCH_SIZE")
        .default(512)
        .argParser(integer(1, 1 << 16)),
    )
    .addOption(
      new Option(
        "--batching <policy>",
        '"measured": time a decode step of each size at load and decode together as many waiting requests as is cheapest per token; "full": always all of them',
      )
        .env("AIRAVATA_BATCHING")
        .choices(["measured", "full"])
        .default("measured"),
    )
    .addOption(
      new Option(
        "--prefix-cache <on|off>",
        "on: a slot keeps its KV cells after a call, and a new call takes the free slot sharing the longest prompt prefix and evaluates only the rest; off: every prompt is evaluated whole",
      )
        .env("AIRAVATA_PREFIX_CACHE")
        .choices(["on", "off"])
        .default("on"),
    )
    .addOption(
      new Option(
        "--flash-attention <auto|on|off>",
        "llama.cpp's flash attention: auto (the default, node-llama-cpp's and llama.cpp's tools' own) lets llama.cpp turn it on wherever the backend has it, the CPU included; off decoded far into a long context twice as fast on a Zen 3 CPU, on evaluates a long fresh prompt faster there",
      )
        .env("AIRAVATA_FLASH_ATTENTION")
        .choices(FLASH_ATTENTION)
        .default("auto"),
    )
    .addOption(
      new Option(
        "--thread-pool <persistent|per-decode>",
        "persistent: the engine keeps ggml's decode threads in a pool between decodes, as llama.cpp's server does (a small library compiled on first use, needs a C compiler and git; without them, per-decode); per-decode: every decode starts and joins its threads, as node-llama-cpp's prebuilt does by itself",
      )
        .env("AIRAVATA_THREAD_POOL")
        .choices(THREAD_POOL)
        .default("persistent"),
    )
    .addOption(
      new Option(
        "--vllm-metrics <on|off>",
        "also publish waiting, running and KV-cache use as vllm:num_requests_waiting, vllm:num_requests_running and " +
          "vllm:kv_cache_usage_perc (label model_name), the names the Gateway API Inference Extension reads by default",
      )
        .env("AIRAVATA_VLLM_METRICS")
        .choices(["on", "off"])
        .default("on"),
    )
    .addOption(
      new Option(
        "--stream-interval <auto|N|N/Tms|Tms>",
        "how streamed messages after the first (which always goes alone) are paced: N sends a message once N tokens are ready (1: every token as it is decoded); N/Tms sends up to N tokens a message, none held longer than T ms, and a token at once when the decode is slower than that; Tms sends at most one message every T ms; auto is 8/50ms. Fewer messages cost the service less per token",
      )
        .env("AIRAVATA_STREAM_INTERVAL")
        .default(AUTO_STREAM_INTERVAL, "auto")
        .argParser(streamInterval),
    )
    .addOption(
      new Option("--max-queue <n>", "requests that may wait for a slot; more are refused with RESOURCE_EXHAUSTED")
        .env("AIRAVATA_MAX_QUEUE")
        .default(64)
        .argParser(integer(0, 1 << 20)),
    )
    .addOption(
      new Option("--max-message-bytes <n>", "largest request message accepted")
        .env("AIRAVATA_MAX_MESSAGE_BYTES")
        .default(1 << 20)
        .argParser(integer(1024, 1 << 30)),
    )
    .addOption(
      new Option("--tls-cert <path>", "PEM certificate: serve TLS (h2 and http/1.1 by ALPN)")
        .env("AIRAVATA_TLS_CERT")
        .argParser(readable),
    )
    .addOption(new Option("--tls-key <path>", "PEM private key for --tls-cert").env("AIRAVATA_TLS_KEY").argParser(readable))
    .addOption(
      new Option("--cors-origins <list>", 'comma-separated browser origins allowed cross-origin, or "*"')
        .env("AIRAVATA_CORS_ORIGINS")
        .default(""),
    )
    .addOption(
      new Option("--grace-period <seconds>", "on SIGTERM, how long running streams may finish")
        .env("AIRAVATA_GRACE_PERIOD")
        .default(30)
        .argParser(integer(0, 3600)),
    )
    .addOption(
      new Option(
        "--deadline-margin <ms>",
        "the least a Generate call with a deadline is ended ahead of it, so that its status and trailers reach the client first",
      )
        .env("AIRAVATA_DEADLINE_MARGIN")
        .default(30)
        .argParser(integer(0, 60_000)),
    )
    .addOption(
      new Option(
        "--max-streams-per-connection <n>",
        "HTTP/2 streams one connection may have open at once (a client opening more loses its connection)",
      )
        .env("AIRAVATA_MAX_STREAMS_PER_CONNECTION")
        .default(100)
        .argParser(integer(1, 10_000)),
    )
    .addOption(
      new Option("--max-connections <n>", "connections open at once, all clients together; more are closed on arrival")
        .env("AIRAVATA_MAX_CONNECTIONS")
        .default(1024)
        .argParser(integer(1, 1_000_000)),
    )
    .addOption(
      new Option(
        "--max-connections-per-client <n>",
        "connections one client address may have open at once (0: no limit); more are closed on arrival",
      )
        .env("AIRAVATA_MAX_CONNECTIONS_PER_CLIENT")
        .default(256)
        .argParser(integer(0, 1_000_000)),
    )
    .addOption(
      new Option("--idle-timeout <seconds>", "an HTTP/2 connection with no open stream for this long is closed (GOAWAY)")
        .env("AIRAVATA_IDLE_TIMEOUT")
        .default(300)
        .argParser(integer(1, 86_400)),
    )
    .addOption(
      new Option(
        "--headers-timeout <seconds>",
        "time an HTTP/1.1 client has to send its request headers (slow clients are cut off)",
      )
        .env("AIRAVATA_HEADERS_TIMEOUT")
        .default(30)
        .argParser(integer(1, 3600)),
    )
    .addOption(
      new Option("--engine-watchdog <seconds>", "kill and restart an engine process that answers no ping for this long")
        .env("AIRAVATA_ENGINE_WATCHDOG")
        .default(15)
        .argParser(integer(1, 3600)),
    )
    .addOption(
      new Option("--engine-max-restarts <n>", "engine failures within five minutes after which it is not restarted again")
        .env("AIRAVATA_ENGINE_MAX_RESTARTS")
        .default(5)
        .argParser(integer(0, 1000)),
    )
    .addOption(
      new Option("--log-level <level>", "log level")
        .env("AIRAVATA_LOG_LEVEL")
        .choices(["fatal", "error", "warn", "info", "debug", "trace", "silent"])
        .default("info"),
    );
}

/** Parses and validates; on a bad value, prints one line and exits with code 2. */
export function loadConfig(argv: readonly string[] = process.argv): Readonly<Config> {
  const command = buildCommand().exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });
  command.parse(argv as string[]);
  const o = command.opts();
  const fail = (message: string): never => command.error(`error: ${message}`, { exitCode: 2 });
  const ids = (value: string) =>
    value
      .split(",")
      .map((v) => v.trim())
      .filter(Boolean);
  const checkId = (id: string) => {
    if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(id)) fail(`"${id}" is not a variant id (lower-case letters, digits, ".", "_", "-")`);
  };
  for (const id of [o.variant as string, ...ids(o.fallback)]) checkId(id);
  let variants: Config["variants"];
  if (o.variants !== undefined) {
    const listed = ids(String(o.variants)).map((item) => {
      const [id = "", weight] = item.split("=").map((s) => s.trim());
      checkId(id);
      if (weight !== undefined && !/^\d{1,6}$/.test(weight))
        fail(`--variants: the weight of "${id}" must be a whole number from 0 up`);
      return { id, weight: weight === undefined ? undefined : Number(weight) };
    });
    if (listed.length === 0) fail("--variants names no variant");
    if (new Set(listed.map((v) => v.id)).size < listed.length) fail("--variants names a variant twice");
    const weighted = listed.some((v) => v.weight !== undefined);
    variants = listed.map((v, i) => ({ id: v.id, weight: v.weight ?? (weighted ? 0 : i === 0 ? 100 : 0) }));
    if (!variants.some((v) => v.weight > 0))
      fail("--variants: the weights are all zero; at least one variant must take the calls");
    if (o.model) fail("--variants and --model cannot go together: --model serves one file");
    if (ids(o.fallback).length > 0) fail("--fallback is for --variant alone; with --variants each variant that fails is skipped");
  }
  let adminToken = process.env.AIRAVATA_ADMIN_TOKEN || undefined;
  if (o.adminTokenFile) adminToken = readFileSync(o.adminTokenFile, "utf8").trim() || undefined;
  if (adminToken !== undefined && adminToken.length < 16) fail("the admin token must be at least 16 characters");
  if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) fail("--tls-cert and --tls-key go together: set both or neither");
  const corsOrigins = String(o.corsOrigins)
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const origin of corsOrigins) {
    if (origin !== "*" && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      fail(`--cors-origins: "${origin}" is not an origin such as https://app.example.com`);
    }
  }
  return Object.freeze({
    modelPath: (o.model as string | undefined) || undefined,
    variant: o.variant,
    fallback: ids(o.fallback),
    variants,
    modelsDir: o.modelsDir,
    manifestPath: o.manifest,
    adminToken,
    memoryBudget: o.memoryBudget,
    host: o.host,
    port: o.port,
    gpu: o.gpu,
    threads: o.threads,
    contextSize: o.contextSize,
    parallel: o.parallel,
    batchSize: o.batchSize,
    batching: o.batching,
    streamInterval: o.streamInterval,
    prefixCache: o.prefixCache === "on",
    flashAttention: o.flashAttention,
    threadPool: o.threadPool,
    vllmMetrics: o.vllmMetrics === "on",
    maxQueue: o.maxQueue,
    maxMessageBytes: o.maxMessageBytes,
    tls: o.tlsCert ? { cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey) } : undefined,
    corsOrigins,
    gracePeriodMs: o.gracePeriod * 1000,
    deadlineMarginMs: o.deadlineMargin,
    maxStreamsPerConnection: o.maxStreamsPerConnection,
    maxConnections: o.maxConnections,
    maxConnectionsPerClient: o.maxConnectionsPerClient,
    idleTimeoutMs: o.idleTimeout * 1000,
    headersTimeoutMs: o.headersTimeout * 1000,
    engineWatchdogMs: o.engineWatchdog * 1000,
    engineMaxRestarts: o.engineMaxRestarts,
    logLevel: o.logLevel,
  });
}
