/**
 * `npm run fleet:swap -- --to q8_0`: a rolling variant change over the fleet
 * of `npm run fleet`, one replica at a time: Drain (health NOT_SERVING, calls
 * still served), wait until the balancer has it out of rotation and its calls
 * have ended, SwapVariant, Drain with resume, wait until the balancer has it
 * back, then the next. The first replica that fails stops the run (exit 1):
 * it is put back in rotation on what it serves, and the ones after it are not
 * touched. The admin token comes from AIRAVATA_ADMIN_TOKEN. Each line is
 * JSON with `atS`, the seconds since the run began; each replica's last line
 * says how many calls the balancer gave every replica while it was changed.
 */
import { Command, InvalidArgumentError } from "commander";
import { SwapPhase } from "../src/gen/airavata/v1/admin_pb.js";
import { AdminClient } from "../clients/grpc-client.js";
import { HAPROXY_DEFAULTS, replicaStates } from "./haproxy.js";

const int = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a whole number from 1 up.`);
  return n;
};

const cli = new Command("fleet:swap")
  .description("swap every replica of the fleet to another variant, one at a time, without failing a call")
  .requiredOption("--to <id>", "the variant to swap to")
  .option("--host <host>", "where the replicas and the stats page listen", HAPROXY_DEFAULTS.host)
  .option("--replicas <n>", "how many replicas", int("--replicas"), 3)
  .option("--base-port <port>", "the first replica's port; the others follow", int("--base-port"), HAPROXY_DEFAULTS.replicas[0])
  .option("--replica-ports <list>", "the replicas' ports, comma-separated (instead of --replicas and --base-port)")
  .option("--stats-port <port>", "HAProxy's stats page", int("--stats-port"), HAPROXY_DEFAULTS.statsPort)
  .option("--timeout <ms>", "the most each step may take (out of rotation, drained, swapped, back)", int("--timeout"), 120_000);
cli.parse();
const o = cli.opts<{
  to: string;
  host: string;
  replicas: number;
  basePort: number;
  replicaPorts?: string;
  statsPort: number;
  timeout: number;
}>();
const ports = o.replicaPorts
  ? o.replicaPorts.split(",").map((p) => int("--replica-ports")(p.trim()))
  : Array.from({ length: o.replicas }, (_, i) => o.basePort + i);
const token = process.env.AIRAVATA_ADMIN_TOKEN;
if (!token) {
  process.stderr.write("error: set AIRAVATA_ADMIN_TOKEN to the replicas' admin token\n");
  process.exit(2);
}

const started = performance.now();
const say = (msg: string, fields: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ msg, atS: Math.round(performance.now() - started) / 1000, ...fields })}\n`);

/** Calls the balancer has given each replica so far. */
async function callsGiven(): Promise<Record<string, number>> {
  return Object.fromEntries(Object.entries(await replicaStates(o.host, o.statsPort)).map(([name, s]) => [name, s.sessions]));
}

/** The balancer's state of replica `name` (r1, r2, …): UP, DOWN, … */
async function rotation(name: string): Promise<string> {
  const state = (await replicaStates(o.host, o.statsPort))[name];
  if (!state) throw new Error(`the balancer has no server ${name}`);
  return state.status;
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + o.timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${o.timeout} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (const [i, port] of ports.entries()) {
  const name = `r${i + 1}`;
  const admin = new AdminClient(`${o.host}:${port}`, token);
  const call = async <T extends { codeName: string; message: string }>(what: string, outcome: Promise<T>): Promise<T> => {
    const result = await outcome;
    if (result.codeName !== "OK") throw new Error(`${what}: ${result.codeName}: ${result.message}`);
    return result;
  };
  try {
    const status = (await call("GetStatus", admin.getStatus())).response!;
    if (status.activeVariant === o.to) {
      say("replica already on it", { replica: name, port, variant: o.to });
      continue;
    }
    const given = await callsGiven();
    const began = performance.now();
    await call("Drain", admin.drain(false));
    // "UP 1/2" is still in rotation (one failed check of the two that take it out).
    await until("out of rotation", async () => (await rotation(name)).startsWith("DOWN"));
    say("replica out of rotation", { replica: name, port });
    await until("its calls to end", async () => {
      const s = (await call("GetStatus", admin.getStatus())).response!;
      return s.running + s.queued === 0;
    });
    // Each phase once (LOADING repeats with the load's progress).
    let phase = "";
    await call(
      "SwapVariant",
      admin.swapVariant({ variantId: o.to }, (p) => {
        if (SwapPhase[p.phase] === phase) return;
        phase = SwapPhase[p.phase] ?? String(p.phase);
        say("swap phase", { replica: name, phase: phase.toLowerCase() });
      }),
    );
    await call("Drain (resume)", admin.drain(true));
    await until("back in rotation", async () => (await rotation(name)) === "UP");
    const after = (await call("GetStatus", admin.getStatus())).response!;
    const now = await callsGiven();
    say("replica swapped", {
      replica: name,
      port,
      variant: after.activeVariant,
      seconds: Math.round(performance.now() - began) / 1000,
      // From its Drain to its return: what each replica was given meanwhile (its own: the second before the checks took it out).
      callsMeanwhile: Object.fromEntries(Object.entries(now).map(([r, n]) => [r, n - (given[r] ?? 0)])),
    });
  } catch (error) {
    // Back in rotation on whatever it serves now; the replicas after it are left as they are.
    await admin.drain(true).catch(() => undefined);
    say("stopped", { replica: name, port, error: (error as Error).message, untouched: ports.slice(i + 1) });
    admin.close();
    process.exit(1);
  }
  admin.close();
}
say("fleet swapped", { variant: o.to, replicas: ports });
