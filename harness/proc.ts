/**
 * What Linux's /proc says about processes, for the benches and tests: the
 * children of a process, the service's engine processes, their memory, open
 * files and CPU time. A process that ends while being read is skipped.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/**
 * Fields of /proc/<pid>/stat (or a thread's, `task/<tid>` under it) after the
 * command name: [0] state, [1] ppid, … [11] utime, [12] stime.
 */
function statFields(pid: number, tid?: string): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}${tid === undefined ? "" : `/task/${tid}`}/stat`, "latin1")
      .split(") ")[1]!
      .split(" ");
  } catch {
    return undefined;
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1");
  } catch {
    return "";
  }
}

/** Live processes whose command line contains `text`. */
export function processesMentioning(text: string): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .map(Number)
    .filter((pid) => cmdline(pid).includes(text));
}

/** The engine processes (two during a swap) whose parent is `serverPid`. */
export function enginePids(serverPid: number): number[] {
  return processesMentioning("engine/child/main").filter((pid) => Number(statFields(pid)?.[1]) === serverPid);
}

/**
 * Memory, MiB (NaN once the process is gone): resident, its anonymous and
 * file-backed parts (a mapped model file's pages are the latter), and the peak.
 */
export function memoryMiB(pid: number): { rss: number; anon: number; file: number; peak: number } {
  let status = "";
  try {
    status = readFileSync(`/proc/${pid}/status`, "latin1");
  } catch {
    // Gone: every field NaN.
  }
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN) / 1024;
  return { rss: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile"), peak: field("VmHWM") };
}

/** Resident memory, MiB (NaN once the process is gone). */
export function rssMiB(pid: number): number {
  return memoryMiB(pid).rss;
}

/** Open file descriptors (NaN once the process is gone). */
export function openFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

let clockTicks: number | undefined;
/** ms per clock tick, the unit of utime and stime. */
function msPerTick(): number {
  clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  return 1000 / clockTicks;
}

/** CPU time the process has used in user and in kernel mode, ms (NaN once it is gone). */
export function cpuSplitMs(pid: number): { user: number; system: number } {
  const fields = statFields(pid);
  if (!fields) return { user: NaN, system: NaN };
  return { user: Number(fields[11]) * msPerTick(), system: Number(fields[12]) * msPerTick() };
}

/** CPU time (user + system) each of the process's threads has used, ms, by thread id (the main thread's is the pid). */
export function threadCpuMs(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    const fields = statFields(pid, tid); // undefined: the thread ended while being read
    if (fields) out.set(Number(tid), (Number(fields[11]) + Number(fields[12])) * msPerTick());
  }
  return out;
}

/** CPU time (user + system) the process has used, ms. */
export function cpuMs(pid: number): number {
  const { user, system } = cpuSplitMs(pid);
  return user + system;
}
