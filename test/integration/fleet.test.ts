/**
 * Three replicas behind a real HAProxy (Debian's package), started by the
 * project's own script (`npm run fleet`): every kind of client through the
 * balancer, and a replica killed under load.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import OpenAI from "openai";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { HAPROXY_DEFAULTS, replicaStates } from "../../deploy/haproxy.js";
import type { RunSummary } from "../../bench/ghz/report.js";
import { freePorts } from "../../harness/free-ports.js";
import { GenerationService } from "../../src/gen/airavata/v1/generation_pb.js";
import { chromiumPath } from "../helpers/browser.js";
import { ghzInstalled } from "../helpers/ghz.js";
import { modelPath } from "../helpers/models.js";
import { ROOT } from "../helpers/server.js";

interface FleetLine {
  msg: string;
  replica?: number;
  pid?: number;
}

let fleet: ChildProcess;
const lines: FleetLine[] = [];
let port: number;
let statsPort: number;
const waitFor = async (match: (l: FleetLine) => boolean, ms: number, from = 0) => {
  const until = Date.now() + ms;
  for (;;) {
    const found = lines.slice(from).find(match);
    if (found) return found;
    if (Date.now() > until) throw new Error(`no fleet line in ${ms} ms; saw ${JSON.stringify(lines)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

/** The balancer's view of each replica (r1, r2, r3): UP, DOWN, … */
async function rotation(): Promise<Record<string, string>> {
  const states = await replicaStates("127.0.0.1", statsPort);
  return Object.fromEntries(Object.entries(states).map(([name, state]) => [name, state.status]));
}

let modelsDir: string;
let replicaPorts: number[];
const TOKEN = "fleet-admin-token-0123456789";

interface SwapStep {
  msg: string;
  /** Seconds since the run began. */
  atS: number;
  replica?: string;
  variant?: string;
  phase?: string;
  callsMeanwhile?: Record<string, number>;
  error?: string;
  untouched?: number[];
}

/** `npm run fleet:swap -- --to <variant>` on this fleet, run to its end: its exit code and JSON lines. */
async function fleetSwap(to: string): Promise<{ code: number | null; steps: SwapStep[] }> {
  const swap = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "deploy/fleet-swap.ts",
      "--to",
      to,
      "--replica-ports",
      replicaPorts.join(","),
      "--stats-port",
      String(statsPort),
    ],
    { cwd: ROOT, stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, AIRAVATA_ADMIN_TOKEN: TOKEN } },
  );
  const steps: SwapStep[] = [];
  createInterface({ input: swap.stdout! }).on("line", (line) => steps.push(JSON.parse(line) as SwapStep));
  const code = await new Promise<number | null>((r) => swap.once("exit", r));
  return { code, steps };
}

beforeAll(async () => {
  modelsDir = mkdtempSync(join(tmpdir(), "airavata-fleet-models-"));
  copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
  copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
  const ports = await freePorts(5);
  replicaPorts = ports.slice(2);
  [port, statsPort] = [ports[0]!, ports[1]!];
  fleet = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "deploy/fleet.ts",
      "--port",
      String(port),
      "--stats-port",
      String(statsPort),
      "--replica-ports",
      ports.slice(2).join(","),
      "--",
      "--models-dir",
      modelsDir,
      "--variant",
      "tiny.q4_0",
      "--threads",
      "1",
      "--context-size",
      "1024",
      "--log-level",
      "warn",
    ],
    { cwd: ROOT, stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, AIRAVATA_ADMIN_TOKEN: TOKEN } },
  );
  createInterface({ input: fleet.stdout! }).on("line", (line) => lines.push(JSON.parse(line) as FleetLine));
  await waitFor((l) => l.msg === "fleet ready", 90_000);
}, 120_000);
afterAll(async () => {
  if (!fleet || fleet.exitCode !== null) return;
  const exited = new Promise((r) => fleet.once("exit", r));
  fleet.kill("SIGTERM");
  await exited;
});

describe("a fleet of three behind HAProxy", () => {
  it("serves gRPC, gRPC-Web, Connect and the OpenAI surface through the balancer, across the replicas", async () => {
    expect(Object.values(await rotation())).toEqual(["UP", "UP", "UP"]);
    const grpc = new AiravataClient(`127.0.0.1:${port}`);
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, () => grpc.generate({ prompt: "The", raw: true, temperature: 0 })),
    );
    grpc.close();
    for (const o of outcomes) {
      expect(o.codeName).toBe("OK");
      expect(o.text).toBe("end of story🙏");
      // HTTP/2 end to end: the metric trailers arrive through the balancer.
      expect(o.trailers["airavata-finish-reason"]).toBe("stop");
    }
    const web = createClient(
      GenerationService,
      createGrpcWebTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
    );
    let text = "";
    for await (const r of web.generate({ prompt: "The", raw: true, temperature: 0 })) text += r.text;
    expect(text).toBe("end of story🙏");
    const tokenize = await fetch(`http://127.0.0.1:${port}/airavata.v1.GenerationService/Tokenize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text: "नमस्ते" }),
    });
    expect(tokenize.status).toBe(200);
    expect(((await tokenize.json()) as { count: number }).count).toBe(1);
    const openai = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 });
    const done = await openai.completions.create({ model: "airavata", prompt: "The", temperature: 0 });
    expect(done.choices[0]!.text).toBe("end of story🙏");
    // Least-connections spread the six concurrent calls: every replica served some.
    const served = Object.values(await replicaStates("127.0.0.1", statsPort)).map((r) => r.sessions);
    expect(served.every((n) => n > 0)).toBe(true);
  }, 60_000);

  it("the playground in Chromium through the balancer: Connect and gRPC-Web stream the answer and its metrics", async () => {
    const browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
    try {
      for (const protocol of ["connect", "grpc-web"] as const) {
        // A browser speaks HTTP/1.1 to the balancer, which speaks HTTP/2 to the replica.
        const page = await browser.newPage();
        await page.goto(`http://127.0.0.1:${port}/`);
        await page.check(`input[name="protocol"][value="${protocol}"]`);
        await page.fill("#prompt", "भारत की राजधानी क्या है?");
        await page.click("summary");
        await page.fill('input[name="maxNewTokens"]', "400");
        await page.fill('input[name="temperature"]', "0");
        await page.click("#run");
        await page.waitForSelector('#state[data-state="done"]', { timeout: 30_000 });
        expect((await page.textContent("#output"))!.startsWith("नमस्ते! मैं एक छोटा परीक्षण मॉडल हूँ।")).toBe(true);
        // The trailers came through: the page shows the call's own metrics.
        expect(await page.textContent('[data-metric="variant"]')).toBe("tiny.q4_0");
        expect(await page.textContent('[data-metric="tokens"]')).toMatch(/^\d+ prompt · 400 generated$/);
        await page.close();
      }
    } finally {
      await browser.close();
    }
  }, 90_000);

  // ghz is not in npm or Debian (a Go program): this runs where a developer has installed it.
  it.runIf(ghzInstalled)(
    "npm run bench:ghz through the balancer: every call of each level OK",
    () => {
      const out = join(mkdtempSync(join(tmpdir(), "airavata-fleet-ghz-")), "results");
      const run = spawnSync(
        process.execPath,
        ["--import", "tsx", "bench/ghz/run.ts", "--address", `127.0.0.1:${port}`, "--concurrency", "1,4", "--out", out],
        { cwd: ROOT, encoding: "utf8" },
      );
      expect(run.status, run.stderr).toBe(0);
      const report = JSON.parse(readFileSync(join(out, "ghz.json"), "utf8")) as {
        rows: { total: number; summary: RunSummary }[];
      };
      expect(report.rows.length).toBeGreaterThan(0);
      for (const { total, summary } of report.rows) expect(summary.statuses).toEqual({ OK: total });
    },
    300_000,
  );

  it("SIGKILL of one replica under load: only the calls on it fail; it leaves rotation within the checks and comes back", async () => {
    const victim = lines.filter((l) => l.msg === "replica started" && l.replica === 2).at(-1)!.pid!;
    const seen = lines.length;
    const outcomes: string[] = [];
    const broken: { code: string; message: string; tokens: number }[] = [];
    let calling = true;
    const workers = Array.from({ length: 6 }, async (_, n) => {
      const c = new AiravataClient(`127.0.0.1:${port}`);
      while (calling) {
        const o = await c.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 60 + n * 10 }, undefined, {
          timeoutMs: 30_000,
        });
        outcomes.push(o.codeName);
        if (o.codeName !== "OK")
          broken.push({ code: o.codeName, message: o.message, tokens: o.responses.reduce((k, r) => k + r.tokenIds.length, 0) });
      }
      c.close();
    });
    await new Promise((r) => setTimeout(r, 1500));
    const killedAt = Date.now();
    process.kill(victim, "SIGKILL");
    let downAfter: number | undefined;
    while (downAfter === undefined && Date.now() - killedAt < 10_000) {
      if ((await rotation()).r2 !== "UP") downAfter = Date.now() - killedAt;
      else await new Promise((r) => setTimeout(r, 50));
    }
    // Out of rotation within the checks' fall × interval, with room for one check in flight.
    expect(downAfter).toBeDefined();
    expect(downAfter!).toBeLessThanOrEqual(
      HAPROXY_DEFAULTS.fall * HAPROXY_DEFAULTS.checkIntervalMs + HAPROXY_DEFAULTS.checkIntervalMs + 500,
    );
    // The script starts it again, and the balancer puts it back.
    await waitFor((l) => l.msg === "replica started" && l.replica === 2, 10_000, seen);
    let back = false;
    // A replica starts in seconds, more with five others decoding on two cores.
    for (let i = 0; i < 600 && !back; i++) {
      back = (await rotation()).r2 === "UP";
      if (!back) await new Promise((r) => setTimeout(r, 100));
    }
    expect(back).toBe(true);
    await new Promise((r) => setTimeout(r, 1000));
    calling = false;
    await Promise.all(workers);
    const failed = outcomes.filter((c) => c !== "OK");
    // Only the calls that were on the killed replica: two slots and its queue at most.
    // A call cut after its first tokens reaches the client through HAProxy as a stream reset with no
    // gRPC status (grpc-js: INTERNAL, "RST_STREAM with code 0"); one not answered yet is retried on
    // another replica by the balancer, or ends UNAVAILABLE. None other fails.
    for (const b of broken) {
      if (b.code === "UNAVAILABLE") continue;
      expect(b).toMatchObject({ code: "INTERNAL", message: expect.stringMatching(/RST_STREAM with code 0/) });
      expect(b.tokens).toBeGreaterThan(0);
    }
    expect(failed.length).toBeLessThanOrEqual(6);
    expect(outcomes.filter((c) => c === "OK").length).toBeGreaterThan(20);
  }, 180_000);

  it("npm run fleet:swap under 6 steady callers: every replica on the new variant, replica by replica, zero failed calls", async () => {
    const outcomes: { code: string; variant: string | undefined }[] = [];
    let calling = true;
    const workers = Array.from({ length: 6 }, async (_, n) => {
      const c = new AiravataClient(`127.0.0.1:${port}`);
      while (calling) {
        const o = await c.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 40 + n * 10 }, undefined, {
          timeoutMs: 60_000,
        });
        outcomes.push({ code: o.codeName, variant: o.trailers["airavata-variant"] });
      }
      c.close();
    });
    await new Promise((r) => setTimeout(r, 1000));
    const { code, steps } = await fleetSwap("tiny.q8_0");
    await new Promise((r) => setTimeout(r, 1000));
    calling = false;
    await Promise.all(workers);
    expect(code).toBe(0);
    // One replica at a time, in order, each out of rotation before its swap.
    expect(
      steps.filter((s) => s.msg === "replica out of rotation" || s.msg === "replica swapped").map((s) => `${s.msg} ${s.replica}`),
    ).toEqual([
      "replica out of rotation r1",
      "replica swapped r1",
      "replica out of rotation r2",
      "replica swapped r2",
      "replica out of rotation r3",
      "replica swapped r3",
    ]);
    expect(steps.at(-1)).toMatchObject({ msg: "fleet swapped", variant: "tiny.q8_0" });
    // The log: each replica's phases once each, in order, and what the balancer gave whom meanwhile.
    for (const replica of ["r1", "r2", "r3"]) {
      expect(steps.filter((s) => s.msg === "swap phase" && s.replica === replica).map((s) => s.phase)).toEqual([
        "checking",
        "loading",
        "warming",
        "switched",
        "draining",
        "released",
        "done",
      ]);
      const swapped = steps.find((s) => s.msg === "replica swapped" && s.replica === replica)!;
      const meanwhile = swapped.callsMeanwhile!;
      // The others carried the load while it was changed.
      for (const other of ["r1", "r2", "r3"].filter((r) => r !== replica)) expect(meanwhile[other]).toBeGreaterThan(0);
    }
    expect(steps.every((s, i) => i === 0 || s.atS >= steps[i - 1]!.atS)).toBe(true);
    expect(outcomes.filter((o) => o.code !== "OK")).toEqual([]);
    // The calls moved over as the replicas did: both variants served, the new one last.
    expect(new Set(outcomes.map((o) => o.variant))).toEqual(new Set(["tiny.q4_0", "tiny.q8_0"]));
    expect(outcomes.at(-1)!.variant).toBe("tiny.q8_0");
    const admin = new AiravataClient(`127.0.0.1:${port}`);
    const after = await Promise.all(
      Array.from({ length: 6 }, () => admin.generate({ prompt: "The", raw: true, temperature: 0 })),
    );
    admin.close();
    expect(after.map((o) => o.trailers["airavata-variant"])).toEqual(Array(6).fill("tiny.q8_0"));
  }, 300_000);

  it("fleet:swap stops at the first replica that fails: exit 1, it is back in rotation, the rest untouched", async () => {
    const { code, steps } = await fleetSwap("nope");
    expect(code).toBe(1);
    expect(steps.at(-1)).toMatchObject({
      msg: "stopped",
      replica: "r1",
      error: expect.stringMatching(/SwapVariant: NOT_FOUND: no variant "nope"/),
      untouched: replicaPorts.slice(1),
    });
    let states = await rotation();
    for (let i = 0; i < 50 && states.r1 !== "UP"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      states = await rotation();
    }
    expect(states).toEqual({ r1: "UP", r2: "UP", r3: "UP" });
  }, 60_000);
});
