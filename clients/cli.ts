/**
 * Command-line client: streams a generation to the terminal, then prints the
 * call's metrics from the trailers. Usage: npm run client -- --help
 */
import { Command, InvalidArgumentError } from "commander";
import { AiravataClient, type CallOutcome, type GenerateInit } from "./grpc-client.js";

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
    });
    const controller = new AbortController();
    process.once("SIGINT", () => controller.abort());
    const outcome = await client.generate(request, (r) => process.stdout.write(r.text), {
      signal: controller.signal,
      timeoutMs: o.timeout as number | undefined,
    });
    client.close();
    printOutcome(outcome);
    if (outcome.codeName !== "OK") fail(outcome, address);
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

await program.parseAsync();
