/**
 * The browser playground: Generate with streamed text, Stop, and the call's
 * metrics from its trailers; Compare, one prompt streamed from several
 * loaded variants side by side with their metrics; an admin panel that lists variants, shows the
 * status and swaps with live progress. It speaks Connect or gRPC-Web (a
 * switch) to the address that served it, through @connectrpc/connect-web.
 */
import "@fontsource/noto-sans-devanagari/400.css";
import "@fontsource/noto-sans-devanagari/600.css";
import "./style.css";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, decodeBinaryHeader, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { AdminService, SwapPhase, SwapPolicy, type Variant } from "../../src/gen/airavata/v1/admin_pb.js";
import {
  FinishReason,
  GenerateRequestSchema,
  GenerationMetricsSchema,
  GenerationService,
} from "../../src/gen/airavata/v1/generation_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { firstDifference } from "../first-difference.js";

const $ = <T extends HTMLElement>(selector: string) => document.querySelector<T>(selector)!;

const protocol = () => $<HTMLInputElement>('input[name="protocol"]:checked').value;

/** Connect or gRPC-Web; the RPCs that have no OpenAI form (admin, health) go over Connect when OpenAI is chosen. */
function transport(): Transport {
  const baseUrl = window.location.origin;
  return protocol() === "grpc-web" ? createGrpcWebTransport({ baseUrl }) : createConnectTransport({ baseUrl });
}

/** A sentence a person can act on, for any error a call can end with. */
function explain(error: unknown): string {
  const e = ConnectError.from(error);
  switch (e.code) {
    case Code.ResourceExhausted: {
      const pushback = e.metadata.get("grpc-retry-pushback-ms");
      return (
        `The service is busy or the request is too large: ${e.rawMessage}` + (pushback ? ` Try again in ${pushback} ms.` : "")
      );
    }
    case Code.Unavailable:
      return e.rawMessage.includes("fetch") || e.rawMessage.includes("network")
        ? `Cannot reach the service at ${window.location.origin}: is it running?`
        : `The service cannot take calls right now (loading, swapping or shutting down): ${e.rawMessage}`;
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return `The request was refused: ${e.rawMessage}`;
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return `Admin access refused: ${e.rawMessage}`;
    case Code.NotFound:
      return `Not found: ${e.rawMessage}`;
    case Code.FailedPrecondition:
    case Code.Aborted:
      return `Not possible now: ${e.rawMessage}`;
    case Code.DeadlineExceeded:
      return `The call ran out of time: ${e.rawMessage}`;
    default:
      return `${Code[e.code]}: ${e.rawMessage}`;
  }
}

function showError(box: HTMLElement, message: string | undefined): void {
  box.hidden = message === undefined;
  box.textContent = message ?? "";
}

// ---- Generate ----

let running: AbortController | undefined;

function numberField(form: HTMLFormElement, name: string): number | undefined {
  const value = (form.elements.namedItem(name) as HTMLInputElement).value.trim();
  return value === "" ? undefined : Number(value);
}

function buildRequest(form: HTMLFormElement) {
  const prompt = $<HTMLTextAreaElement>("#prompt").value;
  const system = $<HTMLInputElement>("#system").value.trim();
  const raw = (form.elements.namedItem("raw") as HTMLInputElement).checked;
  const stop = (form.elements.namedItem("stop") as HTMLInputElement).value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  return create(GenerateRequestSchema, {
    ...(system && !raw
      ? {
          messages: [
            { role: "system", content: system },
            { role: "user", content: prompt },
          ],
        }
      : { prompt, raw }),
    maxNewTokens: numberField(form, "maxNewTokens"),
    temperature: numberField(form, "temperature"),
    topK: numberField(form, "topK"),
    topP: numberField(form, "topP"),
    minP: numberField(form, "minP"),
    repeatPenalty: numberField(form, "repeatPenalty"),
    seed: numberField(form, "seed"),
    stop,
  });
}

const FINISH: Record<FinishReason, string> = {
  [FinishReason.UNSPECIFIED]: "unspecified",
  [FinishReason.STOP]: "end of text",
  [FinishReason.LENGTH]: "max new tokens reached",
  [FinishReason.STOP_SEQUENCE]: "stop string",
  [FinishReason.CANCELLED]: "cancelled",
  [FinishReason.DEADLINE]: "deadline",
  [FinishReason.ERROR]: "error",
};

function showMetrics(trailers: Headers, list = $<HTMLDListElement>("#metrics")): void {
  const bin = trailers.get("airavata-metrics-bin");
  if (!bin) return;
  renderMetrics(decodeBinaryHeader(bin, GenerationMetricsSchema), list);
}

/** The `airavata` object of an OpenAI answer's last chunk: the same metrics as the trailers. */
interface OpenAiMetrics {
  variant: string;
  prompt_tokens: number;
  generated_tokens: number;
  queue_ms: number;
  ttft_ms: number;
  prefill_ms: number;
  decode_tokens_per_second: number;
  total_ms: number;
  finish_reason: string;
}

/** The service's finish reason names are its proto enum's, lower-cased ("stop_sequence" is STOP_SEQUENCE). */
function finishReasonNamed(name: string): FinishReason {
  return FinishReason[name.toUpperCase() as keyof typeof FinishReason] ?? FinishReason.UNSPECIFIED;
}

function renderMetrics(
  m: {
    variant: string;
    timeToFirstTokenMs: number;
    decodeTokensPerSecond: number;
    promptTokens: number;
    generatedTokens: number;
    queueMs: number;
    prefillMs: number;
    totalMs: number;
    finishReason: FinishReason;
  },
  list: HTMLDListElement,
): void {
  const rows: [string, string, string][] = [
    ["variant", "variant", m.variant],
    ["ttft", "time to first token", `${m.timeToFirstTokenMs.toFixed(1)} ms`],
    ["tps", "decode speed", `${m.decodeTokensPerSecond.toFixed(1)} tokens/s`],
    ["tokens", "tokens", `${m.promptTokens} prompt · ${m.generatedTokens} generated`],
    ["queue", "queue", `${m.queueMs.toFixed(1)} ms`],
    ["prefill", "prompt evaluation", `${m.prefillMs.toFixed(1)} ms`],
    ["total", "total", `${m.totalMs.toFixed(1)} ms`],
    ["finish", "finished by", FINISH[m.finishReason as FinishReason] ?? String(m.finishReason)],
  ];
  list.replaceChildren(
    ...rows.flatMap(([key, label, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.dataset.metric = key;
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  list.hidden = false;
}

async function generate(form: HTMLFormElement): Promise<void> {
  const output = $<HTMLOutputElement>("#output");
  const state = $("#state");
  const stopButton = $<HTMLButtonElement>("#stop");
  const runButton = $<HTMLButtonElement>("#run");
  output.textContent = "";
  $("#metrics").hidden = true;
  showError($("#error"), undefined);
  running = new AbortController();
  stopButton.disabled = false;
  runButton.disabled = true;
  state.textContent = "waiting for the first token…";
  state.dataset.state = "waiting";
  const client = createClient(GenerationService, transport());
  try {
    if (protocol() === "openai") {
      await generateOpenAi(buildRequest(form), running.signal, output, state);
      state.textContent = "done";
      state.dataset.state = "done";
      return;
    }
    const stream = client.generate(buildRequest(form), { signal: running.signal, onTrailer: showMetrics });
    for await (const response of stream) {
      if (response.queuePosition > 0) {
        state.textContent = `queued: place ${response.queuePosition}`;
        continue;
      }
      if (response.text !== "") {
        output.textContent += response.text;
        state.textContent = "streaming…";
        state.dataset.state = "streaming";
      }
    }
    state.textContent = "done";
    state.dataset.state = "done";
  } catch (error) {
    if (ConnectError.from(error).code === Code.Canceled) {
      state.textContent = "stopped (a cancelled call reports no metrics to the page)";
      state.dataset.state = "stopped";
    } else {
      state.textContent = "failed";
      state.dataset.state = "failed";
      showError($("#error"), explain(error));
    }
  } finally {
    running = undefined;
    stopButton.disabled = true;
    runButton.disabled = false;
  }
}

/**
 * The same request through the OpenAI-compatible surface: a streamed chat
 * completion read as server-sent events, its metrics from the `airavata`
 * object of the last chunk. A refusal becomes the ConnectError `explain` reads.
 */
async function generateOpenAi(
  request: ReturnType<typeof buildRequest>,
  signal: AbortSignal,
  output: HTMLElement,
  state: HTMLElement,
): Promise<void> {
  const messages = request.messages.length > 0 ? request.messages.map((m) => ({ role: m.role, content: m.content })) : undefined;
  const body = {
    model: "airavata",
    ...(messages ? { messages } : { messages: [{ role: "user", content: request.prompt }] }),
    max_tokens: request.maxNewTokens,
    temperature: request.temperature,
    top_k: request.topK,
    top_p: request.topP,
    min_p: request.minP,
    repeat_penalty: request.repeatPenalty,
    seed: request.seed,
    stop: request.stop,
    stream: true,
  };
  const path = request.raw ? "/v1/completions" : "/v1/chat/completions";
  const payload = request.raw ? { ...body, messages: undefined, prompt: request.prompt } : body;
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(payload),
    signal,
  });
  const refusal = (status: number, message: string) =>
    new ConnectError(
      message,
      status === 429
        ? Code.ResourceExhausted
        : status === 503
          ? Code.Unavailable
          : status === 404
            ? Code.NotFound
            : status >= 500
              ? Code.Internal
              : Code.InvalidArgument,
    );
  if (!res.ok || res.body === null) {
    const error = ((await res.json().catch(() => ({}))) as { error?: { message?: string } }).error;
    throw refusal(res.status, error?.message ?? `HTTP ${res.status}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.startsWith("data: ") ? event.slice(6) : "";
      if (data === "" || data === "[DONE]") continue;
      const chunk = JSON.parse(data) as {
        choices?: { delta?: { content?: string }; text?: string }[];
        airavata?: OpenAiMetrics;
        error?: { message: string };
      };
      if (chunk.error) throw refusal(500, chunk.error.message);
      const text = chunk.choices?.[0]?.delta?.content ?? chunk.choices?.[0]?.text ?? "";
      if (text !== "") {
        output.textContent += text;
        state.textContent = "streaming…";
        state.dataset.state = "streaming";
      }
      if (chunk.airavata) {
        const m = chunk.airavata;
        renderMetrics(
          {
            variant: m.variant,
            timeToFirstTokenMs: m.ttft_ms,
            decodeTokensPerSecond: m.decode_tokens_per_second,
            promptTokens: m.prompt_tokens,
            generatedTokens: m.generated_tokens,
            queueMs: m.queue_ms,
            prefillMs: m.prefill_ms,
            totalMs: m.total_ms,
            finishReason: finishReasonNamed(m.finish_reason),
          },
          $<HTMLDListElement>("#metrics"),
        );
      }
    }
  }
}

$<HTMLFormElement>("#generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void generate(event.currentTarget as HTMLFormElement);
});
$("#stop").addEventListener("click", () => running?.abort());

// ---- Compare ----

/** Each loaded variant has a health name of its own (`airavata.v1.GenerationService/<id>`): no admin token needed to list them. */
const VARIANT_HEALTH_PREFIX = `${GenerationService.typeName}/`;

async function refreshCompareVariants(): Promise<void> {
  const box = $("#compare-error");
  showError(box, undefined);
  const fieldset = $<HTMLFieldSetElement>("#compare-variants");
  try {
    const { statuses } = await createClient(Health, transport()).list({});
    const ids = Object.entries(statuses)
      .filter(([name, s]) => name.startsWith(VARIANT_HEALTH_PREFIX) && s.status === HealthCheckResponse_ServingStatus.SERVING)
      .map(([name]) => name.slice(VARIANT_HEALTH_PREFIX.length));
    const legend = fieldset.querySelector("legend")!;
    fieldset.replaceChildren(
      legend,
      ...ids.map((id) => {
        const label = document.createElement("label");
        label.className = "check";
        const box = document.createElement("input");
        box.type = "checkbox";
        box.name = "variant";
        box.value = id;
        box.checked = true;
        label.append(box, ` ${id}`);
        return label;
      }),
    );
    fieldset.dataset.count = String(ids.length);
  } catch (error) {
    showError(box, explain(error));
  }
}

/** A column per variant: its streamed text, then its metric block. */
function compareColumn(id: string): {
  root: HTMLElement;
  text: HTMLOutputElement;
  metrics: HTMLDListElement;
  state: HTMLElement;
} {
  const root = document.createElement("article");
  root.dataset.variant = id;
  const title = document.createElement("h3");
  title.textContent = id;
  const state = document.createElement("span");
  state.className = "column-state";
  state.setAttribute("role", "status");
  const text = document.createElement("output");
  text.lang = "hi";
  text.className = "text";
  const metrics = document.createElement("dl");
  metrics.hidden = true;
  root.append(title, state, text, metrics);
  return { root, text, metrics, state };
}

async function compare(form: HTMLFormElement): Promise<void> {
  const ids = Array.from(form.querySelectorAll<HTMLInputElement>('input[name="variant"]:checked'), (b) => b.value);
  const box = $("#compare-error");
  const state = $("#compare-state");
  const diff = $("#compare-diff");
  showError(box, undefined);
  diff.hidden = true;
  if (ids.length < 2) {
    showError(box, "Choose two or more loaded variants to compare (Refresh variants lists them).");
    return;
  }
  const temperature = numberField(form, "temperature") ?? 0;
  const request = {
    prompt: $<HTMLTextAreaElement>("#compare-prompt").value,
    raw: (form.elements.namedItem("raw") as HTMLInputElement).checked,
    maxNewTokens: numberField(form, "maxNewTokens"),
    temperature,
  };
  const columns = ids.map(compareColumn);
  $("#compare-columns").replaceChildren(...columns.map((c) => c.root));
  state.textContent = "streaming…";
  state.dataset.state = "streaming";
  $<HTMLButtonElement>("#compare-run").disabled = true;
  const client = createClient(GenerationService, transport());
  const results = await Promise.all(
    ids.map(async (variant, i) => {
      const column = columns[i]!;
      column.state.textContent = "waiting…";
      try {
        const stream = client.generate(create(GenerateRequestSchema, { ...request, variant }), {
          onTrailer: (trailers) => showMetrics(trailers, column.metrics),
        });
        for await (const response of stream) {
          if (response.text !== "") {
            column.text.textContent += response.text;
            column.state.textContent = "streaming…";
          }
        }
        column.state.textContent = "done";
        column.root.dataset.state = "done";
        return column.text.textContent ?? "";
      } catch (error) {
        column.state.textContent = explain(error);
        column.root.dataset.state = "failed";
        return undefined;
      }
    }),
  );
  $<HTMLButtonElement>("#compare-run").disabled = false;
  state.textContent = "done";
  state.dataset.state = "done";
  // Greedy texts differ only by the variants: say where each first leaves the first one's.
  const base = results[0];
  if (temperature !== 0 || base === undefined) return;
  const lines: string[] = [];
  for (const [i, text] of results.entries()) {
    if (i === 0 || text === undefined) continue;
    const at = firstDifference(base, text);
    lines.push(
      at === undefined
        ? `${ids[i]} gives the same text as ${ids[0]}.`
        : `${ids[i]} first differs from ${ids[0]} at character ${at}.`,
    );
    if (at !== undefined) {
      for (const column of [columns[0]!, columns[i]!]) {
        const chars = [...(column.text.textContent ?? "")];
        const mark = document.createElement("mark");
        mark.textContent = chars.slice(at).join("");
        if (column.text.querySelector("mark") === null) column.text.replaceChildren(chars.slice(0, at).join(""), mark);
      }
    }
  }
  diff.textContent = lines.join(" ");
  diff.hidden = false;
}

$<HTMLFormElement>("#compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void compare(event.currentTarget as HTMLFormElement);
});
$("#compare-refresh").addEventListener("click", () => void refreshCompareVariants());
void refreshCompareVariants();

// ---- Admin ----

function adminHeaders(): HeadersInit {
  const token = $<HTMLInputElement>("#token").value.trim();
  return token === "" ? {} : { authorization: `Bearer ${token}` };
}

const adminClient = () => createClient(AdminService, transport());

function size(bytes: bigint): string {
  const n = Number(bytes);
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

function variantState(v: Variant): string {
  if (v.active) return "active";
  if (v.loaded) return "loaded";
  if (!v.usable) return `unusable: ${v.unusableReason}`;
  return v.downloaded ? "downloaded" : "not downloaded";
}

async function listVariants(): Promise<void> {
  const box = $("#admin-error");
  showError(box, undefined);
  try {
    const { variants } = await adminClient().listVariants({}, { headers: adminHeaders() });
    const body = $<HTMLTableElement>("#variants").tBodies[0]!;
    body.replaceChildren(
      ...variants.map((v) => {
        const row = document.createElement("tr");
        row.dataset.variant = v.id;
        for (const text of [v.id, v.quantization, size(v.fileSizeBytes), v.bitsPerWeight.toFixed(2), variantState(v)]) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        const cell = document.createElement("td");
        if (!v.active && v.usable) {
          const button = document.createElement("button");
          button.type = "button";
          button.textContent = "Swap to";
          button.addEventListener("click", () => void swap(v.id));
          cell.append(button);
        }
        row.append(cell);
        return row;
      }),
    );
    $("#variants").hidden = false;
    $("#swap").hidden = false;
  } catch (error) {
    showError(box, explain(error));
  }
}

async function showStatus(): Promise<void> {
  const box = $("#admin-error");
  showError(box, undefined);
  try {
    const s = await adminClient().getStatus({}, { headers: adminHeaders() });
    const rows: [string, string][] = [
      ["active variant", s.activeVariant + (s.swappingTo ? ` (swapping to ${s.swappingTo})` : "")],
      ["backend", `${s.backend} · ${s.devices.join(", ")}`],
      ["slots", `${s.running} running / ${s.parallelSlots} · ${s.queued} queued`],
      ["context per request", `${s.contextSize} tokens`],
      ["threads", String(s.threads)],
      ["uptime", `${s.uptimeSeconds.toFixed(0)} s`],
      ["version", s.version],
    ];
    const list = $<HTMLDListElement>("#status-view");
    list.replaceChildren(
      ...rows.flatMap(([label, value]) => {
        const dt = document.createElement("dt");
        dt.textContent = label;
        const dd = document.createElement("dd");
        dd.textContent = value;
        return [dt, dd];
      }),
    );
    list.hidden = false;
  } catch (error) {
    showError(box, explain(error));
  }
}

/** Overall progress of a swap by phase; downloading and loading move within their span. */
const PHASE_SPAN: Partial<Record<SwapPhase, [number, number]>> = {
  [SwapPhase.CHECKING]: [0, 5],
  [SwapPhase.DOWNLOADING]: [5, 45],
  [SwapPhase.LOADING]: [45, 80],
  [SwapPhase.WARMING]: [80, 85],
  [SwapPhase.SWITCHED]: [85, 90],
  [SwapPhase.DRAINING]: [90, 95],
  [SwapPhase.RELEASED]: [95, 99],
  [SwapPhase.DONE]: [100, 100],
};

async function swap(variantId: string): Promise<void> {
  const box = $("#admin-error");
  const bar = $<HTMLProgressElement>("#swap-progress");
  const label = $("#swap-phase");
  showError(box, undefined);
  bar.value = 0;
  label.dataset.phase = "";
  const policy = $<HTMLSelectElement>("#policy").value === "cancel" ? SwapPolicy.CANCEL : SwapPolicy.DRAIN;
  try {
    for await (const p of adminClient().swapVariant({ variantId, policy }, { headers: adminHeaders() })) {
      const [from, to] = PHASE_SPAN[p.phase] ?? [0, 0];
      bar.value = from + ((to - from) * p.percent) / 100;
      const name = SwapPhase[p.phase].toLowerCase();
      label.dataset.phase = name;
      label.textContent =
        `${variantId}: ${name}` +
        (p.phase === SwapPhase.DOWNLOADING || p.phase === SwapPhase.LOADING ? ` ${p.percent.toFixed(0)}%` : "") +
        (p.phase === SwapPhase.DRAINING ? ` (${p.inFlight} running)` : "") +
        (p.phase === SwapPhase.DONE ? ` in ${(p.elapsedMs / 1000).toFixed(1)} s` : "");
    }
  } catch (error) {
    label.dataset.phase = "failed";
    label.textContent = `${variantId}: failed`;
    showError(box, explain(error));
  }
  await Promise.all([listVariants(), showStatus()]);
}

$("#list").addEventListener("click", () => void listVariants());
$("#status").addEventListener("click", () => void showStatus());
