/**
 * Prometheus metrics, with the names serving dashboards already know
 * (time to first token, inter-token latency, queue time, end-to-end latency,
 * running and waiting requests, token counters), labelled by variant.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { MetricsSnapshot } from "./request-metrics.js";

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1];

/** One loaded variant's load, for the gauges. */
export interface VariantLoad {
  variant: string;
  running: number;
  waiting: number;
  weight: number;
  /** KV cells holding tokens and all the cells. */
  kvCells: { used: number; total: number };
}

export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly ttft = new Histogram({
    name: "airavata_time_to_first_token_seconds",
    help: "Time from receipt to the first streamed text.",
    labelNames: ["variant", "api"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  private readonly interToken = new Histogram({
    name: "airavata_inter_token_latency_seconds",
    help: "Mean time between generated tokens of a request, after the first.",
    labelNames: ["variant", "api"],
    buckets: TOKEN_BUCKETS,
    registers: [this.registry],
  });
  private readonly queue = new Histogram({
    name: "airavata_request_queue_time_seconds",
    help: "Time from receipt to a free slot.",
    labelNames: ["variant", "api"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  private readonly prefill = new Histogram({
    name: "airavata_request_prefill_time_seconds",
    help: "Prompt evaluation time of a Generate call, up to its first token (calls that got one, cancelled ones too).",
    labelNames: ["variant", "api"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  private readonly e2e = new Histogram({
    name: "airavata_e2e_request_latency_seconds",
    help: "Time from receipt to the end of a Generate call.",
    labelNames: ["variant", "api"],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  private readonly engineHop = new Histogram({
    name: "airavata_engine_hop_seconds",
    help: "Mean time a request's streamed chunks took from the engine process to the server process.",
    labelNames: ["variant", "api"],
    buckets: [0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05],
    registers: [this.registry],
  });
  private readonly batchSize = new Histogram({
    name: "airavata_request_batch_size",
    help: "Mean number of requests decoded together (continuous batching) in the steps that gave a Generate call its tokens.",
    labelNames: ["variant", "api"],
    buckets: [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
    registers: [this.registry],
  });
  private readonly promptTokens = new Counter({
    name: "airavata_prompt_tokens_total",
    help: "Prompt tokens processed.",
    labelNames: ["variant", "api"],
    registers: [this.registry],
  });
  private readonly promptTokensBySource = new Counter({
    name: "airavata_prompt_tokens_by_source_total",
    help: 'Prompt tokens by where their KV cells came from: "cached" (a slot held them from an earlier call) or "evaluated".',
    labelNames: ["variant", "source", "api"],
    registers: [this.registry],
  });
  private readonly prefixCacheHits = new Counter({
    name: "airavata_prefix_cache_hits_total",
    help: "Generate calls that found part of their prompt in a slot's KV cells.",
    labelNames: ["variant", "api"],
    registers: [this.registry],
  });
  private readonly generationTokens = new Counter({
    name: "airavata_generation_tokens_total",
    help: "Tokens generated.",
    labelNames: ["variant", "api"],
    registers: [this.registry],
  });
  private readonly requests = new Counter({
    name: "airavata_requests_total",
    help: 'Generate calls (api "airavata": gRPC, gRPC-Web, Connect; "openai": the OpenAI-compatible surface) by final code (gRPC\'s names) and finish reason.',
    labelNames: ["variant", "code", "finish_reason", "api"],
    registers: [this.registry],
  });

  private readonly engineEvents = new Counter({
    name: "airavata_engine_events_total",
    help: "Engine process failures and restarts: crashed, hung (killed by the watchdog), restarted, restart_failed, crash_loop (restarts given up).",
    labelNames: ["variant", "event"],
    registers: [this.registry],
  });
  private readonly swaps = new Counter({
    name: "airavata_variant_swaps_total",
    help: "Variant swaps by result.",
    labelNames: ["result"],
    registers: [this.registry],
  });
  private readonly activeVariant = new Gauge({
    name: "airavata_active_variant_info",
    help: "The variants in service, those the routing policy sends calls to (value 1), with their quantization.",
    labelNames: ["variant", "quantization"],
    registers: [this.registry],
  });

  /**
   * @param variants each loaded variant's load, read at every scrape
   * @param vllmNames also publish waiting, running and KV use under vLLM's names (`vllm:…`, label
   *   `model_name`), which the Gateway API Inference Extension's endpoint picker reads by default
   */
  constructor(variants: () => readonly VariantLoad[], vllmNames = true) {
    // Read from the pool at each scrape: one series per loaded variant.
    const perVariant = (name: string, help: string, label: "variant" | "model_name", value: (v: VariantLoad) => number) =>
      new Gauge({
        name,
        help,
        labelNames: [label],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const v of variants()) this.set({ [label]: v.variant }, value(v));
        },
      });
    const kvUsage = (v: VariantLoad) => (v.kvCells.total > 0 ? v.kvCells.used / v.kvCells.total : 0);
    perVariant(
      "airavata_kv_cache_usage_perc",
      "Fraction (0-1) of the variant's KV cells holding tokens (running calls' and those slots keep for the prefix cache), as the engine reported after its last finished call.",
      "variant",
      kvUsage,
    );
    perVariant("airavata_num_requests_running", "Generate calls holding a slot.", "variant", (v) => v.running);
    perVariant("airavata_num_requests_waiting", "Generate calls queued for a slot.", "variant", (v) => v.waiting);
    perVariant(
      "airavata_variant_routing_weight",
      "Each loaded variant's routing weight (its share of the calls that name no variant is weight / the sum).",
      "variant",
      (v) => v.weight,
    );
    if (vllmNames) {
      perVariant("vllm:num_requests_waiting", "airavata_num_requests_waiting under vLLM's name.", "model_name", (v) => v.waiting);
      perVariant("vllm:num_requests_running", "airavata_num_requests_running under vLLM's name.", "model_name", (v) => v.running);
      perVariant("vllm:kv_cache_usage_perc", "airavata_kv_cache_usage_perc under vLLM's name (0-1).", "model_name", kvUsage);
    }
    // prom-client samples the event loop's delay on a timer, every 10 ms unless told: 100 wakeups a
    // second, ~1% of a core here even idle, and each one preempts a decode thread when every core
    // decodes. Four a second still catch every stall (a blocked loop delays the pending sample).
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 250 });
  }

  countEngineEvent(variant: string, event: string): void {
    this.engineEvents.inc({ variant, event });
  }

  countSwap(result: "ok" | "failed"): void {
    this.swaps.inc({ result });
  }

  /** The variants the routing policy sends calls to (value 1 each). */
  setActiveVariants(active: readonly { variant: string; quantization: string }[]): void {
    this.activeVariant.reset();
    for (const labels of active) this.activeVariant.set(labels, 1);
  }

  /** Records one finished Generate call. */
  /** @param api which surface served the call: "airavata" (gRPC, gRPC-Web, Connect) or "openai" */
  observe(m: MetricsSnapshot, code: string, api: "airavata" | "openai" = "airavata"): void {
    const variant = { variant: m.variant, api };
    this.requests.inc({ ...variant, code, finish_reason: m.finishReason });
    this.e2e.observe(variant, m.totalMs / 1000);
    this.queue.observe(variant, m.queueMs / 1000);
    this.promptTokens.inc(variant, m.promptTokens);
    this.promptTokensBySource.inc({ ...variant, source: "cached" }, m.cachedPromptTokens);
    this.promptTokensBySource.inc({ ...variant, source: "evaluated" }, m.promptTokens - m.cachedPromptTokens);
    if (m.cachedPromptTokens > 0) this.prefixCacheHits.inc(variant);
    this.generationTokens.inc(variant, m.generatedTokens);
    if (m.generatedTokens > 0) this.ttft.observe(variant, m.ttftMs / 1000);
    if (m.generatedTokens > 0) this.prefill.observe(variant, m.prefillMs / 1000);
    if (m.decodeTokensPerSecond > 0) this.interToken.observe(variant, 1 / m.decodeTokensPerSecond);
    if (m.engineHopMs > 0) this.engineHop.observe(variant, m.engineHopMs / 1000);
    if (m.batchSize > 0) this.batchSize.observe(variant, m.batchSize);
  }
}
