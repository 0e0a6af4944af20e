import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, type EvaluateResult } from "../../src/gen/airavata/v1/admin_pb.js";
import { enginePids } from "../../harness/proc.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
const TOKEN = "evaluate-test-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
let server: TestServer;
let modelsDir: string;
let admin: ReturnType<typeof createClient<typeof AdminService>>;

beforeAll(async () => {
  modelsDir = mkdtempSync(join(tmpdir(), "airavata-evaluate-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
  copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
  server = await startTestServer({ modelPath: undefined, variant: "tiny.q4_0", modelsDir, adminToken: TOKEN });
  admin = createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl }));
});
afterAll(async () => {
  await server.app.shutdown();
});

async function evaluate(request: Parameters<typeof admin.evaluate>[0], signal?: AbortSignal) {
  const results: EvaluateResult[] = [];
  for await (const r of admin.evaluate(request, { ...auth, signal })) results.push(r);
  return results;
}

describe("Evaluate", () => {
  it("measures each variant: size, bits per weight, load, memory, speed, perplexity; reproducibly", async () => {
    const first = await evaluate({ variantIds: ["tiny.q4_0", "tiny.q8_0"], maxTokens: 128, generateTokens: 32 });
    expect(first.map((r) => [r.variantId, r.quantization, r.error])).toEqual([
      ["tiny.q4_0", "Q4_0", ""],
      ["tiny.q8_0", "Q8_0", ""],
    ]);
    for (const r of first) {
      expect(Number(r.fileSizeBytes)).toBeGreaterThan(0);
      expect(r.bitsPerWeight).toBeGreaterThan(4);
      expect(r.loadMs).toBeGreaterThan(0);
      expect(Number(r.ramBytes)).toBeGreaterThan(0);
      expect(r.timeToFirstTokenMs).toBeGreaterThan(0);
      expect(r.decodeTokensPerSecond).toBeGreaterThan(0);
      expect(Number.isFinite(r.perplexity)).toBe(true);
      expect(r.perplexity).toBeGreaterThan(1);
      expect(r.scoredTokens).toBe(128);
    }
    const again = await evaluate({ variantIds: ["tiny.q4_0"], maxTokens: 128, generateTokens: 32 });
    expect(again[0]!.perplexity).toBe(first[0]!.perplexity);
    // The variant in service was never disturbed.
    const client = new AiravataClient(server.address);
    const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    client.close();
    expect(outcome.trailers["airavata-variant"]).toBe("tiny.q4_0");
  });

  it("the model's own greedy output scores a lower perplexity than the same words shuffled", async () => {
    const client = new AiravataClient(server.address);
    const own = (await client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 60 })).text;
    client.close();
    const words = own.split(" ");
    // A fixed reordering (every 7th word, wrapping), so the test is the same every run.
    const shuffled = words.map((_, i) => words[(i * 7) % words.length]).join(" ");
    const [ownScore] = await evaluate({ variantIds: ["tiny.q8_0"], text: own, maxTokens: 512, generateTokens: 8 });
    const [shuffledScore] = await evaluate({ variantIds: ["tiny.q8_0"], text: shuffled, maxTokens: 512, generateTokens: 8 });
    expect(ownScore!.perplexity).toBeLessThan(shuffledScore!.perplexity / 10);
  });

  it("a cancelled Evaluate stops: its engine is gone at once and no later variant is loaded", async () => {
    const serving = server.app.pool.current!.engine.pid!;
    const measuring = () => enginePids(process.pid).filter((pid) => pid !== serving);
    const controller = new AbortController();
    const call = evaluate({ variantIds: ["tiny.q4_0", "tiny.q8_0"] }, controller.signal).catch((error: unknown) => error);
    // Cancelled while the first variant's engine runs.
    for (let waited = 0; measuring().length === 0; waited += 20) {
      expect(waited).toBeLessThan(20_000);
      await new Promise((r) => setTimeout(r, 20));
    }
    controller.abort();
    expect(ConnectError.from(await call).code).toBe(Code.Canceled);
    // Measuring a tiny variant takes seconds here; the cancelled one's engine must not finish it, and
    // the second variant's must never start.
    for (let waited = 0; measuring().length > 0; waited += 20) {
      expect(waited).toBeLessThan(1500);
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 3000));
    expect(measuring()).toEqual([]);
    const client = new AiravataClient(server.address);
    const next = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    client.close();
    expect(next.text).toBe("end of story🙏");
  });

  it("an unknown id is NOT_FOUND; bad limits are INVALID_ARGUMENT; no token is UNAUTHENTICATED", async () => {
    await expect(evaluate({ variantIds: ["nope"] })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(evaluate({ variantIds: ["tiny.q4_0"], maxTokens: 1 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(
      (async () => {
        for await (const _ of admin.evaluate({})) void _;
      })(),
    ).rejects.toSatisfy((e: unknown) => ConnectError.from(e).code === Code.Unauthenticated);
  });

  it("npm run evaluate writes the table, JSON and a chart", async () => {
    const out = mkdtempSync(join(tmpdir(), "airavata-evaluate-out-"));
    const { stdout } = await exec(
      process.execPath,
      [
        "--import",
        "tsx",
        "src/variants/evaluate-cli.ts",
        "--models-dir",
        modelsDir,
        "--out",
        out,
        "--max-tokens",
        "64",
        "--generate-tokens",
        "16",
        "--threads",
        "1",
        "--gpu",
        "cpu",
      ],
      { cwd: ROOT },
    );
    expect(stdout).toMatch(/\| tiny\.q4_0 \| Q4_0 \|/);
    expect(stdout).toMatch(/\| tiny\.q8_0 \| Q8_0 \|/);
    const json = JSON.parse(readFileSync(join(out, "evaluate.json"), "utf8")) as {
      results: { variantId: string; perplexity: number }[];
    };
    expect(json.results.map((r) => r.variantId).sort()).toEqual(["tiny.q4_0", "tiny.q8_0"]);
    expect(readFileSync(join(out, "evaluate.md"), "utf8")).toMatch(/# Variants side by side/);
    expect(readFileSync(join(out, "evaluate.svg"), "utf8")).toMatch(/^<svg [^>]*>.*perplexity.*<\/svg>\n$/s);
  });
});
