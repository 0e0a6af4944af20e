/**
 * The playground in real Chromium (Debian's `chromium`, driven by
 * playwright-core), against the service on a real port with the real engine:
 * what a person sees in the page.
 */
import { copyFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { chromiumPath } from "../helpers/browser.js";
import { eventually, sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const TOKEN = "browser-admin-token-0123456789";
const ARTIFACTS = join(ROOT, "test-results");
const GREETING = "नमस्ते! मैं एक छोटा परीक्षण मॉडल हूँ।";

let server: TestServer;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  process.env.HF_ENDPOINT = "https://airavata-test.invalid";
  const modelsDir = mkdtempSync(join(tmpdir(), "airavata-browser-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
  copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
  server = await startTestServer({
    modelPath: undefined,
    variant: "tiny.q4_0",
    modelsDir,
    adminToken: TOKEN,
    contextSize: 4096,
    parallel: 2,
  });
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
});
afterAll(async () => {
  await browser?.close();
  await server?.app.shutdown();
  delete process.env.HF_ENDPOINT;
});
beforeEach(async () => {
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  await page.goto(`${server.baseUrl}/`);
});

/**
 * Records every distinct text the output shows, and every state the call
 * goes through, from the page itself, as they change: on a fast machine the
 * tiny model's stream can be over before a selector's next poll.
 */
async function watchOutput(): Promise<void> {
  await page.evaluate(() => {
    const output = document.querySelector("#output")!;
    const state = document.querySelector<HTMLElement>("#state")!;
    const seen: string[] = [];
    const states: string[] = [];
    Object.assign(window, { seen, states });
    new MutationObserver(() => seen.push(output.textContent ?? "")).observe(output, {
      childList: true,
      characterData: true,
      subtree: true,
    });
    new MutationObserver(() => states.push(state.dataset.state ?? "")).observe(state, { attributeFilter: ["data-state"] });
  });
}
const seenTexts = () => page.evaluate(() => (window as unknown as { seen: string[] }).seen);
const seenStates = () => page.evaluate(() => (window as unknown as { states: string[] }).states);

async function setSampling(values: Record<string, string>): Promise<void> {
  await page.click("summary");
  for (const [name, value] of Object.entries(values)) await page.fill(`input[name="${name}"]`, value);
}

describe("playground", () => {
  for (const protocol of ["connect", "grpc-web", "openai"] as const) {
    it(`streams a Hindi prompt's answer in several steps, then shows the call's metrics (${protocol})`, async () => {
      await page.check(`input[name="protocol"][value="${protocol}"]`);
      await page.fill("#prompt", "भारत की राजधानी क्या है?");
      // Long enough that the answer is most unlikely to arrive in one of the page's reads on a busy machine
      // (400 tokens of the tiny model once came in one read through /v1 and left nothing to see grow).
      await setSampling({ maxNewTokens: "1200", temperature: "0" });
      await watchOutput();
      await page.click("#run");
      await page.waitForSelector('#state[data-state="streaming"], #state[data-state="done"]');
      if (protocol === "connect") await page.screenshot({ path: join(ARTIFACTS, "playground-streaming.png"), fullPage: true });
      await page.waitForSelector('#state[data-state="done"]');
      // The page sets its state at every message: what it went through, each once in a row.
      const states = await seenStates();
      expect(states.filter((state, i) => state !== states[i - 1])).toEqual(["waiting", "streaming", "done"]);
      const text = await page.textContent("#output");
      expect(text!.startsWith(GREETING)).toBe(true);
      // The text grew in steps the page could see, each extending the one before.
      const seen = (await seenTexts()).filter((t) => t !== "");
      expect(new Set(seen).size).toBeGreaterThanOrEqual(3);
      for (let i = 1; i < seen.length; i++) expect(seen[i]!.startsWith(seen[i - 1]!)).toBe(true);
      expect(seen.at(-1)).toBe(text);
      // Metrics from the trailers.
      expect(await page.textContent('[data-metric="variant"]')).toBe("tiny.q4_0");
      expect(await page.textContent('[data-metric="tokens"]')).toMatch(/^\d+ prompt · 1200 generated$/);
      expect(await page.textContent('[data-metric="finish"]')).toBe("max new tokens reached");
      expect(await page.textContent('[data-metric="ttft"]')).toMatch(/^\d+\.\d ms$/);
      expect(await page.textContent('[data-metric="tps"]')).toMatch(/^\d+\.\d tokens\/s$/);
      // The OpenAI choice really went through /v1: the server counts the call under that api.
      if (protocol === "openai") {
        expect(await sample(server.baseUrl, "airavata_requests_total", { api: "openai", code: "OK" })).toBe(1);
      }
      await page.close();
    });
  }

  it("Stop cancels the call: the text stops growing and the server counts a cancelled call", async () => {
    await page.fill("#prompt", "नमस्ते");
    await setSampling({ maxNewTokens: "3000", temperature: "0" });
    await page.click("#run");
    await page.waitForFunction(() => (document.querySelector("#output")?.textContent ?? "").length > 50);
    await page.click("#stop");
    await page.waitForSelector('#state[data-state="stopped"]');
    const stoppedAt = await page.textContent("#output");
    await new Promise((r) => setTimeout(r, 300));
    expect(await page.textContent("#output")).toBe(stoppedAt);
    expect(await page.isEnabled("#run")).toBe(true);
    // The server hears of the cancel a moment after the page.
    const cancelled = () =>
      sample(server.baseUrl, "airavata_requests_total", { variant: "tiny.q4_0", code: "CANCELLED", finish_reason: "cancelled" });
    expect(await eventually(cancelled, 1)).toBe(1);
    await page.close();
  });

  it("shows a refused request as a sentence with the reason", async () => {
    await page.fill("#prompt", "नमस्ते");
    await setSampling({ maxNewTokens: "100000" });
    await page.click("#run");
    await page.waitForSelector('#state[data-state="failed"]');
    expect(await page.textContent("#error")).toMatch(
      /^The request was refused: prompt \(\d+ tokens\) \+ max_new_tokens \(100000\)/,
    );
    await page.close();
  });

  it("admin panel: refuses without the token, lists variants and status, swaps with live progress to done", async () => {
    await page.click("#list");
    await page.waitForSelector("#admin-error:not([hidden])");
    expect(await page.textContent("#admin-error")).toMatch(/^Admin access refused: /);

    await page.fill("#token", TOKEN);
    await page.click("#list");
    await page.waitForSelector('#variants tr[data-variant="tiny.q8_0"]');
    expect(await page.textContent('tr[data-variant="tiny.q4_0"] td:nth-child(5)')).toBe("active");
    await page.click("#status");
    await page.waitForSelector("#status-view:not([hidden])");
    expect(await page.textContent("#status-view")).toContain("tiny.q4_0");

    // Watch the phases the page shows while the swap runs.
    await page.evaluate(() => {
      const label = document.querySelector<HTMLElement>("#swap-phase")!;
      const phases: string[] = [];
      (window as unknown as { phases: string[] }).phases = phases;
      new MutationObserver(() => phases.push(label.dataset.phase ?? "")).observe(label, { attributes: true });
    });
    await page.click('tr[data-variant="tiny.q8_0"] button');
    await page.waitForSelector('#swap-phase[data-phase="done"]');
    const phases = await page.evaluate(() => (window as unknown as { phases: string[] }).phases);
    expect(phases).toEqual(expect.arrayContaining(["checking", "loading", "switched", "done"]));
    expect(await page.getAttribute("#swap-progress", "value")).toBe("100");
    await page.waitForSelector('tr[data-variant="tiny.q8_0"] td:nth-child(5):text("active")');
    await page.screenshot({ path: join(ARTIFACTS, "playground-after-swap.png"), fullPage: true });
    await page.close();
  });
});

describe("the Compare view", () => {
  let two: TestServer;
  beforeAll(async () => {
    const modelsDir = mkdtempSync(join(tmpdir(), "airavata-browser-compare-"));
    copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
    copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
    two = await startTestServer({
      modelPath: undefined,
      variants: [
        { id: "tiny.q4_0", weight: 100 },
        { id: "tiny.q8_0", weight: 0 },
      ],
      modelsDir,
      contextSize: 4096,
    });
  });
  afterAll(async () => {
    await two?.app.shutdown();
  });

  it("streams one prompt from both loaded variants side by side, with both metric blocks and where they differ", async () => {
    // What each variant gives over gRPC, for the page to match: the first of these prompts on which
    // the two quantizations differ, so the page has a difference to show.
    const grpc = new AiravataClient(two.address);
    let request = { prompt: "", raw: false, temperature: 0, maxNewTokens: 24 };
    let expected: Record<string, string> = {};
    for (const [prompt, raw] of [
      ["नमस्ते", false],
      ["The", true],
      ["Once upon a time", true],
      ["नमस्ते", true],
    ] as const) {
      request = { ...request, prompt, raw };
      expected = Object.fromEntries(
        await Promise.all(
          ["tiny.q4_0", "tiny.q8_0"].map(
            async (variant) => [variant, (await grpc.generate({ ...request, variant })).text] as const,
          ),
        ),
      );
      if (expected["tiny.q4_0"] !== expected["tiny.q8_0"]) break;
    }
    grpc.close();
    expect(expected["tiny.q4_0"]).not.toBe(expected["tiny.q8_0"]);
    const compare = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
    await compare.goto(`${two.baseUrl}/#compare`);
    // The loaded variants are listed from health, without an admin token.
    await compare.waitForSelector('#compare-variants[data-count="2"]');
    expect(await compare.$$eval('input[name="variant"]', (boxes) => boxes.map((b) => (b as HTMLInputElement).value))).toEqual([
      "tiny.q4_0",
      "tiny.q8_0",
    ]);
    await compare.fill("#compare-prompt", request.prompt);
    await compare.fill('#compare-form input[name="maxNewTokens"]', String(request.maxNewTokens));
    if (request.raw) await compare.check('#compare-form input[name="raw"]');
    // Count the changes each column's text goes through while it streams.
    await compare.evaluate(() => {
      const counts: Record<string, number> = {};
      (window as unknown as { counts: Record<string, number> }).counts = counts;
      new MutationObserver((records) => {
        for (const r of records) {
          const element = r.target instanceof Element ? r.target : r.target.parentElement;
          const column = element?.closest("article");
          if (column && element?.closest(".text")) {
            const id = column.getAttribute("data-variant")!;
            counts[id] = (counts[id] ?? 0) + 1;
          }
        }
      }).observe(document.querySelector("#compare-columns")!, { childList: true, characterData: true, subtree: true });
    });
    await compare.click("#compare-run");
    await compare.waitForSelector('#compare-state[data-state="done"]');
    for (const variant of ["tiny.q4_0", "tiny.q8_0"]) {
      const column = `#compare-columns article[data-variant="${variant}"]`;
      expect(await compare.getAttribute(column, "data-state")).toBe("done");
      expect(await compare.textContent(`${column} .text`)).toBe(expected[variant]);
      expect(await compare.textContent(`${column} [data-metric="variant"]`)).toBe(variant);
      expect(await compare.textContent(`${column} [data-metric="ttft"]`)).toMatch(/^\d+\.\d ms$/);
      expect(await compare.textContent(`${column} [data-metric="tps"]`)).toMatch(/^\d+\.\d tokens\/s$/);
      expect(await compare.textContent(`${column} [data-metric="tokens"]`)).toMatch(/^\d+ prompt · \d+ generated$/);
      expect(await compare.textContent(`${column} [data-metric="finish"]`)).toMatch(/^(end of text|max new tokens reached)$/);
    }
    const counts = await compare.evaluate(() => (window as unknown as { counts: Record<string, number> }).counts);
    expect(counts["tiny.q4_0"]).toBeGreaterThanOrEqual(3);
    expect(counts["tiny.q8_0"]).toBeGreaterThanOrEqual(3);
    const a = [...expected["tiny.q4_0"]!];
    const b = [...expected["tiny.q8_0"]!];
    let at = 0;
    while (at < Math.max(a.length, b.length) && a[at] === b[at]) at++;
    expect(await compare.textContent("#compare-diff")).toBe(`tiny.q8_0 first differs from tiny.q4_0 at character ${at}.`);
    // Each column marks its text from there on.
    for (const [variant, chars] of [
      ["tiny.q4_0", a],
      ["tiny.q8_0", b],
    ] as const) {
      expect(await compare.textContent(`#compare-columns article[data-variant="${variant}"] .text mark`)).toBe(
        chars.slice(at).join(""),
      );
    }
    await compare.screenshot({ path: join(ARTIFACTS, "playground-compare.png"), fullPage: true });
    await compare.close();
    await page.close();
  }, 60_000);
});
