/**
 * The service as the benches run it: `src/main.ts` in a process of its own,
 * resolved once its model is loaded.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

export interface BenchServer {
  child: ChildProcess;
  port: number;
  stop(): Promise<void>;
}

/** `cwd`: the checkout whose `src/main.ts` runs (another commit's worktree, to compare with). */
export async function startBenchServer(args: string[], env: Record<string, string> = {}, cwd?: string): Promise<BenchServer> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
    cwd,
  });
  // Never outlive the bench, even when it fails.
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  child.once("exit", () => process.off("exit", kill));
  const port = await new Promise<number>((resolve, reject) => {
    let listening = 0;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as { msg: string; port?: number; stepMs?: unknown };
      if (entry.msg === "listening") listening = entry.port!;
      if (entry.msg.startsWith("model loaded")) resolve(listening);
      // The thread tuner's choices, as they happen (with --threads auto).
      if (entry.msg.startsWith("decode threads")) process.stderr.write(`service: ${entry.msg} ${JSON.stringify(entry.stepMs)}\n`);
    });
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  return {
    child,
    port,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}
