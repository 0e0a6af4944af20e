/**
 * `npm run fleet -- --replicas 3 [-- <service flags>]`: replicas of the
 * service on loopback ports behind a real HAProxy (Debian's `haproxy`), the
 * configuration written by deploy/haproxy.ts. A replica that exits on its own
 * (a crash, SIGKILL) is started again; the balancer's health check brings it
 * back into rotation. SIGTERM or Ctrl-C drains every replica (each goes
 * NOT_SERVING, the balancer stops sending, running calls finish), then stops
 * the balancer. Its own lines on stdout are JSON: "replica started" (with its
 * pid), "fleet ready" (every replica in rotation), "replica exited", "stopped".
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Command, InvalidArgumentError } from "commander";
import { HAPROXY_DEFAULTS, haproxyConfig, replicaStates } from "./haproxy.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const int = (name: string, min: number) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a whole number from ${min} up.`);
  return n;
};

const cli = new Command("fleet")
  .description("replicas of airavata-serve behind HAProxy on this machine; service flags go after --")
  .option("--replicas <n>", "how many replicas", int("--replicas", 1), 3)
  .option("--host <host>", "the address everything listens on", HAPROXY_DEFAULTS.host)
  .option("--port <port>", "the balancer's port, where clients connect", int("--port", 1), HAPROXY_DEFAULTS.port)
  .option(
    "--base-port <port>",
    "the first replica's port; the others follow",
    int("--base-port", 1),
    HAPROXY_DEFAULTS.replicas[0],
  )
  .option("--replica-ports <list>", "the replicas' ports, comma-separated (instead of --replicas and --base-port)")
  .option(
    "--stats-port <port>",
    "HAProxy's stats page (/stats, ;csv for CSV)",
    int("--stats-port", 1),
    HAPROXY_DEFAULTS.statsPort,
  )
  .option(
    "--check-interval <ms>",
    "the balancer's health check interval",
    int("--check-interval", 100),
    HAPROXY_DEFAULTS.checkIntervalMs,
  )
  .option("--haproxy <path>", "the HAProxy binary", "haproxy")
  .argument("[service flags...]", "flags for every replica (after --), e.g. -- --model models/x.gguf --threads 1")
  .allowExcessArguments(false);
cli.parse();
const o = cli.opts<{
  replicas: number;
  host: string;
  port: number;
  basePort: number;
  statsPort: number;
  checkInterval: number;
  haproxy: string;
  replicaPorts?: string;
}>();
const serviceFlags = cli.args;

const say = (msg: string, fields: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ msg, ...fields })}\n`);

try {
  execFileSync(o.haproxy, ["-v"], { stdio: "ignore" });
} catch {
  process.stderr.write(`error: ${o.haproxy} is not installed: apt-get install haproxy (.ci/run does it)\n`);
  process.exit(1);
}

const ports = o.replicaPorts
  ? o.replicaPorts.split(",").map((p) => int("--replica-ports", 1)(p.trim()))
  : Array.from({ length: o.replicas }, (_, i) => o.basePort + i);
const dir = mkdtempSync(join(os.tmpdir(), "airavata-fleet-"));
const configPath = join(dir, "haproxy.cfg");
writeFileSync(
  configPath,
  haproxyConfig({
    ...HAPROXY_DEFAULTS,
    host: o.host,
    port: o.port,
    replicas: ports,
    statsPort: o.statsPort,
    checkIntervalMs: o.checkInterval,
  }),
);
execFileSync(o.haproxy, ["-c", "-q", "-f", configPath], { stdio: "inherit" });

let stopping = false;
const replicas: (ChildProcess | undefined)[] = [];

function startReplica(i: number): void {
  const port = ports[i]!;
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "src/main.ts", "--host", o.host, "--port", String(port), ...serviceFlags],
    {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  replicas[i] = child;
  say("replica started", { replica: i + 1, port, pid: child.pid });
  // The replicas' JSON logs go to stderr, each line marked with its replica.
  createInterface({ input: child.stdout! }).on("line", (line) => process.stderr.write(`[r${i + 1}] ${line}\n`));
  child.once("exit", (code, signal) => {
    replicas[i] = undefined;
    say("replica exited", { replica: i + 1, port, code, signal });
    // On its own (a crash, a kill): started again; the health check puts it back in rotation when it serves.
    if (!stopping) setTimeout(() => !stopping && startReplica(i), 500);
  });
}

for (let i = 0; i < ports.length; i++) startReplica(i);
// HAProxy logs to its stdout: onto ours for errors, so that our stdout stays JSON lines.
const balancer = spawn(o.haproxy, ["-db", "-f", configPath], { stdio: ["ignore", 2, 2] });
balancer.once("exit", (code) => {
  if (!stopping) {
    process.stderr.write(`error: haproxy exited (code ${code})\n`);
    void stop(1);
  }
});

// Ready once the balancer has every replica in rotation.
void (async () => {
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    if (stopping) return;
    try {
      const states = Object.values(await replicaStates(o.host, o.statsPort));
      if (states.length === ports.length && states.every((s) => s.status === "UP")) {
        say("fleet ready", { port: o.port, statsPort: o.statsPort, replicas: ports });
        return;
      }
    } catch {
      // the stats page is not up yet
    }
  }
})();

async function stop(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  // Each replica drains itself: NOT_SERVING at once (the balancer stops sending), running calls finish.
  await Promise.all(
    replicas.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (!child || child.exitCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGTERM");
        }),
    ),
  );
  balancer.kill("SIGTERM");
  await new Promise((r) => (balancer.exitCode !== null ? r(undefined) : balancer.once("exit", r)));
  say("stopped");
  process.exit(code);
}
process.once("SIGTERM", () => void stop(0));
process.once("SIGINT", () => void stop(0));
