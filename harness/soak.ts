/**
 * The soak: a mix of calls for a while against the service, every call held
 * to the statuses its scenario allows, with swaps between two variants and
 * (optionally) engine kills on a schedule; the server's and engine's memory
 * and open files sampled as it goes. The project's own grpc-js clients.
 */
import { AdminClient, AiravataClient, type CallOutcome } from "../clients/grpc-client.js";
import { SwapPhase } from "../src/gen/airavata/v1/admin_pb.js";
import { prng } from "../src/util/prng.js";
import { enginePids, openFds, rssMiB } from "./proc.js";

export interface SoakOptions {
  address: string;
  adminToken: string;
  /** The two variants swapped between. */
  variants: [string, string];
  durationMs: number;
  /** Concurrent callers. */
  workers: number;
  swapEveryMs: number;
  /** 0: no faults. */
  killEngineEveryMs: number;
  /** The server process, to sample (and to find its engine process under). */
  serverPid: number;
  seed: number;
}

interface Sample {
  atMs: number;
  serverRssMiB: number;
  serverFds: number;
  engineRssMiB: number;
  engineFds: number;
}

export interface SoakReport {
  durationMs: number;
  workers: number;
  /** Calls by scenario and final status. */
  calls: Record<string, Record<string, number>>;
  totalCalls: number;
  /** Calls that ended with a status their scenario does not allow; each listed. */
  unexpected: { scenario: string; status: string; message: string }[];
  hung: number;
  swaps: { done: number; failed: number };
  faults: { injected: number; survived: number };
  samples: Sample[];
  /** Least-squares slope after the first fifth of the run, per minute. */
  slopes: { serverRssMiBPerMin: number; serverFdsPerMin: number; engineRssMiBPerMin: number; engineFdsPerMin: number };
  end: { running: number; waiting: number };
}

const CALL_LIMIT_MS = 60_000;

function slope(points: { x: number; y: number }[]): number {
  const ps = points.filter((p) => Number.isFinite(p.y));
  if (ps.length < 2) return 0;
  const mx = ps.reduce((a, p) => a + p.x, 0) / ps.length;
  const my = ps.reduce((a, p) => a + p.y, 0) / ps.length;
  const num = ps.reduce((a, p) => a + (p.x - mx) * (p.y - my), 0);
  const den = ps.reduce((a, p) => a + (p.x - mx) ** 2, 0);
  return den === 0 ? 0 : num / den;
}

/** Each scenario: what it sends, and the statuses it may end with. */
const SCENARIOS = ["generate", "cancel-queued", "cancel-decode", "short-deadline", "tokenize", "admin-read"] as const;
type Scenario = (typeof SCENARIOS)[number];
const WEIGHTS: Record<Scenario, number> = {
  generate: 4,
  "cancel-queued": 1,
  "cancel-decode": 2,
  "short-deadline": 1,
  tokenize: 2,
  "admin-read": 1,
};
const ALLOWED: Record<Scenario, string[]> = {
  // Busy is an answer, not a failure: the queue is bounded on purpose.
  generate: ["OK", "RESOURCE_EXHAUSTED"],
  "cancel-queued": ["CANCELLED", "OK", "RESOURCE_EXHAUSTED"],
  "cancel-decode": ["CANCELLED", "OK", "RESOURCE_EXHAUSTED"],
  "short-deadline": ["DEADLINE_EXCEEDED", "OK", "RESOURCE_EXHAUSTED"],
  tokenize: ["OK"],
  "admin-read": ["OK"],
};

export async function runSoak(options: SoakOptions, onProgress?: (line: string) => void): Promise<SoakReport> {
  const random = prng(options.seed);
  const pick = (): Scenario => {
    const total = SCENARIOS.reduce((a, s) => a + WEIGHTS[s], 0);
    let r = random() * total;
    for (const s of SCENARIOS) if ((r -= WEIGHTS[s]) < 0) return s;
    return "generate";
  };
  const client = new AiravataClient(options.address);
  const admin = new AdminClient(options.address, options.adminToken);
  const calls: Record<string, Record<string, number>> = {};
  const unexpected: SoakReport["unexpected"] = [];
  let hung = 0;
  const swaps = { done: 0, failed: 0 };
  const faults = { injected: 0, survived: 0 };
  /** Windows in which engine faults were being recovered from: calls overlapping them may end UNAVAILABLE. */
  const faultWindows: { from: number; to: number }[] = [];
  const samples: Sample[] = [];
  const started = Date.now();
  const end = started + options.durationMs;

  // Swaps and engine kills take turns, so a kill never lands on an engine a swap is loading.
  let turn: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = turn.then(fn);
    turn = run.catch(() => {});
    return run;
  };

  const record = (scenario: Scenario, outcome: CallOutcome, callStart: number) => {
    const byStatus = (calls[scenario] ??= {});
    byStatus[outcome.codeName] = (byStatus[outcome.codeName] ?? 0) + 1;
    const inFault = faultWindows.some((w) => callStart <= w.to && Date.now() >= w.from);
    const allowed = ALLOWED[scenario].includes(outcome.codeName) || (inFault && outcome.codeName === "UNAVAILABLE");
    if (!allowed) unexpected.push({ scenario, status: outcome.codeName, message: outcome.message });
  };

  const oneCall = async (): Promise<CallOutcome> => {
    const scenario = pick();
    const callStart = Date.now();
    const controller = new AbortController();
    const limit = setTimeout(() => controller.abort(), CALL_LIMIT_MS);
    const prompt = random() < 0.5 ? "नमस्ते" : "भारत की राजधानी क्या है?";
    let outcome: CallOutcome;
    try {
      switch (scenario) {
        case "generate":
          outcome = await client.generate({
            prompt,
            maxNewTokens: 1 + Math.floor(random() * 200),
            temperature: random() < 0.5 ? 0 : 0.8,
          });
          break;
        case "cancel-queued":
          // Cancelled right away: in the queue, or in prefill.
          setTimeout(() => controller.abort(), Math.floor(random() * 5));
          outcome = await client.generate({ prompt, maxNewTokens: 300 }, undefined, { signal: controller.signal });
          break;
        case "cancel-decode": {
          const after = 1 + Math.floor(random() * 40);
          let seen = 0;
          outcome = await client.generate({ prompt, maxNewTokens: 400 }, () => ++seen === after && controller.abort(), {
            signal: controller.signal,
          });
          break;
        }
        case "short-deadline":
          outcome = await client.generate({ prompt, maxNewTokens: 400 }, undefined, {
            timeoutMs: 20 + Math.floor(random() * 300),
          });
          break;
        case "tokenize":
          outcome = await client.tokenize(prompt);
          break;
        case "admin-read":
          outcome = random() < 0.5 ? await admin.listVariants() : await admin.getStatus();
          break;
      }
    } finally {
      clearTimeout(limit);
    }
    // Our own limit firing on a call that was not meant to be cancelled is a hang.
    if (Date.now() - callStart >= CALL_LIMIT_MS) hung++;
    record(scenario, outcome, callStart);
    return outcome;
  };

  // Callers behave as well-made clients do: after UNAVAILABLE they wait a little, and when busy
  // they wait as long as the server's retry hint says.
  const worker = async () => {
    while (Date.now() < end) {
      const outcome = await oneCall();
      const pause =
        outcome.codeName === "UNAVAILABLE"
          ? 250
          : outcome.codeName === "RESOURCE_EXHAUSTED"
            ? Math.min(1000, Number(outcome.trailers["grpc-retry-pushback-ms"] ?? 100))
            : 0;
      if (pause > 0) await new Promise((r) => setTimeout(r, pause));
    }
  };

  const swapper = async () => {
    let next = 1;
    while (Date.now() + options.swapEveryMs < end) {
      await new Promise((r) => setTimeout(r, options.swapEveryMs));
      const variantId = options.variants[next]!;
      const result = await exclusive(() => admin.swapVariant({ variantId }, undefined, { timeoutMs: 120_000 }));
      if (result.codeName === "OK" && result.responses.at(-1)?.phase === SwapPhase.DONE) {
        swaps.done++;
        next = 1 - next;
      } else {
        swaps.failed++;
        unexpected.push({ scenario: "swap", status: result.codeName, message: result.message });
      }
      onProgress?.(`swap to ${variantId}: ${result.codeName}`);
    }
  };

  const faulter = async () => {
    if (options.killEngineEveryMs <= 0) return;
    while (Date.now() + options.killEngineEveryMs < end) {
      await new Promise((r) => setTimeout(r, options.killEngineEveryMs));
      await exclusive(async () => {
        const pid = enginePids(options.serverPid)[0];
        if (pid === undefined) return;
        const window = { from: Date.now(), to: Number.POSITIVE_INFINITY };
        faultWindows.push(window);
        process.kill(pid, "SIGKILL");
        faults.injected++;
        // Survived: within a minute a new engine answers calls.
        const deadline = Date.now() + 60_000;
        for (;;) {
          const probe = await client.tokenize("नमस्ते", { timeoutMs: 2000 });
          if (probe.codeName === "OK" && !enginePids(options.serverPid).includes(pid)) {
            faults.survived++;
            break;
          }
          if (Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        window.to = Date.now();
        onProgress?.(`engine killed (pid ${pid}); serving again after ${window.to - window.from} ms`);
      });
    }
  };

  const sampler = async () => {
    while (Date.now() < end) {
      const engines = enginePids(options.serverPid);
      samples.push({
        atMs: Date.now() - started,
        serverRssMiB: rssMiB(options.serverPid),
        serverFds: openFds(options.serverPid),
        engineRssMiB: engines.reduce((a, pid) => a + rssMiB(pid), 0),
        engineFds: engines.reduce((a, pid) => a + openFds(pid), 0),
      });
      await new Promise((r) => setTimeout(r, Math.min(5000, options.durationMs / 20)));
    }
  };

  await Promise.all([...Array.from({ length: options.workers }, worker), swapper(), faulter(), sampler()]);
  // Back to empty: nothing running, nothing queued.
  let status = await admin.getStatus();
  for (let i = 0; i < 50 && (status.response?.running || status.response?.queued); i++) {
    await new Promise((r) => setTimeout(r, 100));
    status = await admin.getStatus();
  }
  client.close();
  admin.close();
  const after = samples.filter((s) => s.atMs >= options.durationMs / 5);
  const perMin = (key: keyof Omit<Sample, "atMs">) => slope(after.map((s) => ({ x: s.atMs / 60_000, y: s[key] })));
  return {
    durationMs: Date.now() - started,
    workers: options.workers,
    calls,
    totalCalls: Object.values(calls).reduce((n, byStatus) => n + Object.values(byStatus).reduce((a, b) => a + b, 0), 0),
    unexpected,
    hung,
    swaps,
    faults,
    samples,
    slopes: {
      serverRssMiBPerMin: perMin("serverRssMiB"),
      serverFdsPerMin: perMin("serverFds"),
      engineRssMiBPerMin: perMin("engineRssMiB"),
      engineFdsPerMin: perMin("engineFds"),
    },
    end: { running: status.response?.running ?? -1, waiting: status.response?.queued ?? -1 },
  };
}

export function soakMarkdown(r: SoakReport, where: string): string {
  const f = (n: number, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : "–");
  const first = r.samples[0];
  const last = r.samples.at(-1);
  return [
    "# Soak run",
    "",
    `- date: ${new Date().toISOString()}`,
    `- service: ${where}`,
    `- ${(r.durationMs / 60_000).toFixed(1)} minutes, ${r.workers} concurrent callers, ${r.totalCalls} calls`,
    "",
    "| summary | value |",
    "|---|---:|",
    `| calls made | ${r.totalCalls} |`,
    `| calls that ended in a way their scenario does not allow | ${r.unexpected.length} |`,
    `| hung calls | ${r.hung} |`,
    `| swaps done / failed | ${r.swaps.done} / ${r.swaps.failed} |`,
    `| engine kills injected / survived | ${r.faults.injected} / ${r.faults.survived} |`,
    `| server RSS MiB start → end (slope after warm-up, MiB/min) | ${f(first?.serverRssMiB ?? NaN, 1)} → ${f(last?.serverRssMiB ?? NaN, 1)} (${f(r.slopes.serverRssMiBPerMin)}) |`,
    `| server open fds start → end (slope, per min) | ${first?.serverFds ?? "–"} → ${last?.serverFds ?? "–"} (${f(r.slopes.serverFdsPerMin)}) |`,
    `| engine RSS MiB start → end (slope, MiB/min) | ${f(first?.engineRssMiB ?? NaN, 1)} → ${f(last?.engineRssMiB ?? NaN, 1)} (${f(r.slopes.engineRssMiBPerMin)}) |`,
    `| engine open fds start → end (slope, per min) | ${first?.engineFds ?? "–"} → ${last?.engineFds ?? "–"} (${f(r.slopes.engineFdsPerMin)}) |`,
    `| slots running / queue at the end | ${r.end.running} / ${r.end.waiting} |`,
    "",
    "| scenario | status | calls |",
    "|---|---|---:|",
    ...Object.entries(r.calls).flatMap(([scenario, byStatus]) =>
      Object.entries(byStatus).map(([status, n]) => `| ${scenario} | ${status} | ${n} |`),
    ),
    "",
    ...(r.unexpected.length > 0
      ? ["Unexpected:", "", ...r.unexpected.slice(0, 50).map((u) => `- ${u.scenario}: ${u.status} ${u.message}`), ""]
      : []),
  ].join("\n");
}
