/**
 * Command-line client: streams a generation to the terminal, then prints the
 * call's metrics from the trailers. Usage: npm run client -- --help
 */
import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import { SwapPhase, SwapPolicy, type SwapProgress } from "../src/gen/airavata/v1/admin_pb.js";
import { type Evaluation, evaluationMarkdown } from "../src/variants/evaluation-report.js";
import { firstDifference } from "./first-difference.js";
import { AdminClient, AiravataClient, type CallOutcome, type GenerateInit } from "./grpc-client.js";

const number = (name: string) => (value: string) => {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number.`);
  return n;
};

function printOutcome(outcome: CallOutcome): void {
  const m = outcome.metrics;
  if (m) {
    process.stderr.write(
      `\n[${m.variant}] ${outcome.codeName} · finish ${outcome.trailers["airavata-finish-reason"]} · ` +
        `prompt ${m.promptTokens} tok · generated ${m.generatedTokens} tok · queue ${m.queueMs.toFixed(1)} ms · ` +
        `ttft ${m.timeToFirstTokenMs.toFixed(1)} ms · prefill ${m.prefillMs.toFixed(1)} ms · ` +
        `decode ${m.decodeTokensPerSecond.toFixed(1)} tok/s · total ${m.totalMs.toFixed(1)} ms\n`,
    );
  }
}

function fail(outcome: CallOutcome, address: string): never {
  const hint = outcome.codeName === "UNAVAILABLE" ? ` (is the server running at ${address}?)` : "";
  process.stderr.write(`error: ${outcome.codeName}: ${outcome.message}${hint}\n`);
  process.exit(1);
}

const program = new Command("airavata")
  .description("client for airavata-serve (gRPC)")
  .option(
    "-a, --address <host:port>",
    "server address (env AIRAVATA_ADDRESS)",
    process.env.AIRAVATA_ADDRESS ?? "localhost:50051",
  );

program
  .command("generate")
  .description("stream a generation; metrics go to stderr at the end")
  .argument("<prompt>", "the prompt (a user message, unless --raw)")
  .option("--raw", "send the prompt without the chat format")
  .option("--system <text>", "a system message before the prompt")
  .option("-n, --max-new-tokens <n>", "tokens to generate at most", number("max-new-tokens"))
  .option("-t, --temperature <t>", "0 for greedy", number("temperature"))
  .option("--top-k <k>", "top-k", number("top-k"))
  .option("--top-p <p>", "top-p", number("top-p"))
  .option("--min-p <p>", "min-p", number("min-p"))
  .option("--repeat-penalty <r>", "repeat penalty", number("repeat-penalty"))
  .option("--seed <s>", "sampling seed", number("seed"))
  .option("--stop <text...>", "stop strings")
  .option("--timeout <ms>", "deadline for the call, in milliseconds", number("timeout"))
  .option("--variant <id>", "the loaded variant to generate with (default: as the server routes)")
  .option("--routing-key <key>", "the same key, the same variant (while the weights stay)")
  .action(async (prompt: string, o: Record<string, unknown>) => {
    const address = program.opts().address as string;
    const client = new AiravataClient(address);
    const request: GenerateInit = o.system
      ? {
          messages: [
            { role: "system", content: o.system as string },
            { role: "user", content: prompt },
          ],
        }
      : { prompt, raw: Boolean(o.raw) };
    Object.assign(request, {
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      minP: o.minP,
      repeatPenalty: o.repeatPenalty,
      seed: o.seed,
      stop: (o.stop as string[] | undefined) ?? [],
      variant: (o.variant as string | undefined) ?? "",
    });
    const controller = new AbortController();
    process.once("SIGINT", () => controller.abort());
    const outcome = await client.generate(request, (r) => process.stdout.write(r.text), {
      signal: controller.signal,
      timeoutMs: o.timeout as number | undefined,
      metadata: o.routingKey ? { "airavata-routing-key": o.routingKey as string } : {},
    });
    client.close();
    printOutcome(outcome);
    if (outcome.codeName !== "OK") fail(outcome, address);
  });

program
  .command("compare")
  .description("stream one prompt from several loaded variants at once; a table of their metrics, and where the texts differ")
  .requiredOption("--variants <ids>", "comma-separated loaded variants, e.g. q4_k_m,q8_0")
  .requiredOption("--prompt <text>", "the prompt (a user message, unless --raw)")
  .option("--raw", "send the prompt without the chat format")
  .option("-n, --max-new-tokens <n>", "tokens to generate at most", number("max-new-tokens"))
  .option(
    "-t, --temperature <t>",
    "0 (the default here) is greedy: the texts then differ only by the variants",
    number("temperature"),
  )
  .action(async (o: { variants: string; prompt: string; raw?: boolean; maxNewTokens?: number; temperature?: number }) => {
    const address = program.opts().address as string;
    const ids = o.variants
      .split(",")
      .map((v) => v.trim())
      .filter(Boolean);
    if (ids.length < 2) {
      process.stderr.write("error: --variants needs two or more variants to compare\n");
      process.exit(2);
    }
    const client = new AiravataClient(address);
    const temperature = o.temperature ?? 0;
    const outcomes = await Promise.all(
      ids.map((variant) =>
        client.generate({ prompt: o.prompt, raw: Boolean(o.raw), maxNewTokens: o.maxNewTokens, temperature, variant }),
      ),
    );
    client.close();
    const failed = outcomes.find((x) => x.codeName !== "OK");
    if (failed) fail(failed, address);
    const rows = outcomes.map((x, i) => {
      const m = x.metrics!;
      return [
        ids[i]!,
        `${m.timeToFirstTokenMs.toFixed(1)} ms`,
        `${m.decodeTokensPerSecond.toFixed(1)} tok/s`,
        String(m.generatedTokens),
        x.trailers["airavata-finish-reason"] ?? "",
      ];
    });
    const header = ["variant", "ttft", "decode", "tokens", "finish"];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    for (const row of [header, ...rows])
      process.stdout.write(
        `${row
          .map((c, i) => c.padEnd(widths[i]!))
          .join("  ")
          .trimEnd()}\n`,
      );
    process.stdout.write("\n");
    for (const [i, x] of outcomes.entries()) process.stdout.write(`[${ids[i]}] ${x.text}\n`);
    if (temperature === 0) {
      const base = outcomes[0]!.text;
      for (const [i, x] of outcomes.entries()) {
        if (i === 0) continue;
        const at = firstDifference(base, x.text);
        process.stdout.write(
          at === undefined
            ? `\n${ids[i]} gives the same text as ${ids[0]}\n`
            : `\n${ids[i]} first differs from ${ids[0]} at character ${at}: "${[...base].slice(at, at + 12).join("")}" vs "${[...x.text].slice(at, at + 12).join("")}"\n`,
        );
      }
    }
  });

program
  .command("tokenize")
  .description("print the token ids of a text")
  .argument("<text>")
  .action(async (text: string) => {
    const address = program.opts().address as string;
    const client = new AiravataClient(address);
    const outcome = await client.tokenize(text);
    client.close();
    if (outcome.codeName !== "OK" || !outcome.response) fail(outcome, address);
    process.stdout.write(
      `${outcome.response.count} tokens (${outcome.response.variant}): ${outcome.response.tokenIds.join(" ")}\n`,
    );
  });

const admin = program
  .command("admin")
  .description("operate the server: variants, status, swaps (token from AIRAVATA_ADMIN_TOKEN or --token-file)")
  .option("--token-file <path>", "file holding the admin token");

function adminClient(): { client: AdminClient; address: string } {
  const address = program.opts().address as string;
  const file = admin.opts().tokenFile as string | undefined;
  const token = file ? readFileSync(file, "utf8").trim() : process.env.AIRAVATA_ADMIN_TOKEN;
  return { client: new AdminClient(address, token || undefined), address };
}

const gb = (bytes: bigint | number) => `${(Number(bytes) / 1e9).toFixed(2)} GB`;

admin
  .command("list")
  .description("list every variant the server knows")
  .action(async () => {
    const { client, address } = adminClient();
    const outcome = await client.listVariants();
    client.close();
    if (outcome.codeName !== "OK" || !outcome.response) fail(outcome, address);
    const rows = outcome.response.variants.map((v) => [
      `${v.active ? "*" : " "} ${v.id}`,
      v.quantization || "-",
      v.downloaded ? gb(v.fileSizeBytes) : "-",
      v.parameterCount ? `${(Number(v.parameterCount) / 1e6).toFixed(1)}M` : "-",
      v.bitsPerWeight ? v.bitsPerWeight.toFixed(2) : "-",
      !v.usable
        ? `unusable: ${v.unusableReason}`
        : v.active
          ? "in service"
          : v.loaded
            ? "loaded"
            : v.downloaded
              ? "downloaded"
              : `download from ${v.source}`,
    ]);
    const header = ["  id", "quant", "size", "params", "bits/w", "state"];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    for (const row of [header, ...rows]) {
      process.stdout.write(`${row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")}\n`);
    }
  });

admin
  .command("status")
  .description("the variant in service, the device and the load")
  .action(async () => {
    const { client, address } = adminClient();
    const outcome = await client.getStatus();
    client.close();
    if (outcome.codeName !== "OK" || !outcome.response) fail(outcome, address);
    const s = outcome.response;
    const lines = [
      `variant:   ${s.activeVariant}${s.swappingTo ? ` (swapping to ${s.swappingTo})` : ""}`,
      `backend:   ${s.backend} (${s.devices.join(", ")}), ${s.threads} threads`,
      `slots:     ${s.parallelSlots} × ${s.contextSize} tokens; running ${s.running}, queued ${s.queued}`,
      `memory:    RAM ${gb(s.ramFreeBytes)} free of ${gb(s.ramTotalBytes)}` +
        (s.vramTotalBytes > 0n ? `; VRAM ${gb(s.vramFreeBytes)} free of ${gb(s.vramTotalBytes)}` : ""),
      `uptime:    ${s.uptimeSeconds.toFixed(0)} s, version ${s.version}`,
      ...s.loadedVariants.map(
        (v) =>
          `loaded:    ${v.variantId} (${v.quantization}) weight ${v.weight}, ${v.calls} calls, ` +
          `running ${v.running}, queued ${v.queued}${v.serving ? "" : ", not serving"}`,
      ),
      ...s.startupNotes.map((n) => `startup:   ${n}`),
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
  });

/** Prints admin progress (a swap's, a load's, an unload's) on stderr: live on a terminal, a line a phase otherwise. */
function progressPrinter(): { onProgress(p: SwapProgress): void; end(): void } {
  const tty = process.stderr.isTTY;
  let lastPhase = "";
  let lastQuarter = -1;
  return {
    onProgress(p) {
      const phase = SwapPhase[p.phase].toLowerCase();
      const bar = (percent: number) => `[${"#".repeat(Math.round(percent / 5)).padEnd(20)}] ${percent.toFixed(0).padStart(3)}%`;
      const detail =
        p.phase === SwapPhase.DOWNLOADING
          ? `${bar(p.percent)} ${gb(p.bytesDone)} of ${gb(p.bytesTotal)}`
          : p.phase === SwapPhase.LOADING
            ? bar(p.percent)
            : p.phase === SwapPhase.DRAINING
              ? `${p.inFlight} calls still running on the old variant`
              : p.message;
      const line = `${(p.elapsedMs / 1000).toFixed(1).padStart(6)} s  ${phase.padEnd(11)} ${detail}`;
      if (tty && phase === lastPhase) {
        process.stderr.write(`\r${line}`);
      } else if (tty) {
        process.stderr.write(`${lastPhase ? "\n" : ""}${line}`);
      } else {
        // Without a terminal: each phase once, and progress at every quarter.
        const quarter = Math.floor(p.percent / 25);
        if (phase !== lastPhase || quarter !== lastQuarter) process.stderr.write(`${line}\n`);
        lastQuarter = quarter;
      }
      lastPhase = phase;
    },
    end() {
      if (tty && lastPhase) process.stderr.write("\n");
    },
  };
}

admin
  .command("load")
  .description("load a variant beside those loaded (weight 0: it serves calls that name it), with live progress")
  .argument("<id>", "catalog id of the variant")
  .action(async (id: string) => {
    const { client, address } = adminClient();
    const printer = progressPrinter();
    const outcome = await client.loadVariant({ variantId: id }, printer.onProgress);
    client.close();
    printer.end();
    if (outcome.codeName !== "OK") fail(outcome, address);
  });

admin
  .command("unload")
  .description("take a loaded variant out of service: drain (or cancel) its calls, end its engine")
  .argument("<id>", "catalog id of the variant")
  .addOption(new Option("--policy <policy>", "what happens to its running calls").choices(["drain", "cancel"]).default("drain"))
  .option("--drain-timeout <ms>", "with drain: cancel calls still running after this long", number("drain-timeout"))
  .action(async (id: string, o: { policy: string; drainTimeout?: number }) => {
    const { client, address } = adminClient();
    const printer = progressPrinter();
    const outcome = await client.unloadVariant(
      { variantId: id, policy: o.policy === "cancel" ? SwapPolicy.CANCEL : SwapPolicy.DRAIN, drainTimeoutMs: o.drainTimeout },
      printer.onProgress,
    );
    client.close();
    printer.end();
    if (outcome.codeName !== "OK") fail(outcome, address);
  });

admin
  .command("drain")
  .description("out of a balancer's rotation: health NOT_SERVING, calls still served (--resume: back in)")
  .option("--resume", "back into rotation")
  .action(async (o: { resume?: boolean }) => {
    const { client, address } = adminClient();
    const outcome = await client.drain(Boolean(o.resume));
    client.close();
    if (outcome.codeName !== "OK" || !outcome.response) fail(outcome, address);
    process.stdout.write(
      `${outcome.response.draining ? "drained" : "in rotation"}; ${outcome.response.inFlight} calls in flight\n`,
    );
  });

admin
  .command("route")
  .description("split the calls that name no variant: a weight per loaded variant (those left out get 0)")
  .argument("<weights...>", "id=weight, e.g. q4_k_m=90 q8_0=10")
  .action(async (items: string[]) => {
    const weights: Record<string, number> = {};
    for (const item of items) {
      const [id, weight] = item.split("=");
      if (!id || weight === undefined || !/^\d+$/.test(weight)) {
        process.stderr.write(`error: "${item}" is not id=weight (a whole number)\n`);
        process.exit(2);
      }
      weights[id] = Number(weight);
    }
    const { client, address } = adminClient();
    const outcome = await client.setRouting(weights);
    client.close();
    if (outcome.codeName !== "OK" || !outcome.response) fail(outcome, address);
    const now = outcome.response.weights;
    const total = Object.values(now).reduce((a, b) => a + b, 0);
    for (const [id, weight] of Object.entries(now)) {
      process.stdout.write(`${id}  weight ${weight}  ${((100 * weight) / total).toFixed(1)}%\n`);
    }
  });

admin
  .command("swap")
  .description("put another variant in service, with live progress")
  .argument("<id>", "catalog id of the variant")
  .addOption(new Option("--policy <policy>", "what happens to running calls").choices(["drain", "cancel"]).default("drain"))
  .option("--drain-timeout <ms>", "with drain: cancel calls still running after this long", number("drain-timeout"))
  .option("--allow-downtime", "if both variants do not fit in memory, unload the old one first")
  .action(async (id: string, o: { policy: string; drainTimeout?: number; allowDowntime?: boolean }) => {
    const { client, address } = adminClient();
    const printer = progressPrinter();
    const outcome = await client.swapVariant(
      {
        variantId: id,
        policy: o.policy === "cancel" ? SwapPolicy.CANCEL : SwapPolicy.DRAIN,
        drainTimeoutMs: o.drainTimeout,
        allowDowntime: Boolean(o.allowDowntime),
      },
      printer.onProgress,
    );
    client.close();
    printer.end();
    if (outcome.codeName !== "OK") fail(outcome, address);
  });

admin
  .command("evaluate")
  .description("measure variants side by side on the server: size, speed, memory, perplexity")
  .argument("[ids...]", "catalog ids (default: every downloaded variant)")
  .option("--max-tokens <n>", "tokens of the evaluation text scored", number("max-tokens"))
  .option("--generate-tokens <n>", "tokens generated to time decoding", number("generate-tokens"))
  .action(async (ids: string[], o: { maxTokens?: number; generateTokens?: number }) => {
    const { client, address } = adminClient();
    const results: Evaluation[] = [];
    const outcome = await client.evaluate({ variantIds: ids, maxTokens: o.maxTokens, generateTokens: o.generateTokens }, (r) => {
      process.stderr.write(`measured ${r.variantId}${r.error ? ` (${r.error})` : ""}\n`);
      results.push({
        ...r,
        fileSizeBytes: Number(r.fileSizeBytes),
        parameterCount: Number(r.parameterCount),
        ramBytes: Number(r.ramBytes),
        vramBytes: Number(r.vramBytes),
        error: r.error || undefined,
      });
    });
    client.close();
    if (outcome.codeName !== "OK") fail(outcome, address);
    process.stdout.write(`${evaluationMarkdown(results)}\n`);
  });

await program.parseAsync();
