import { spawn } from "node:child_process";
import { type AddressInfo, createServer } from "node:net";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { enginePids, processesMentioning } from "../../harness/proc.js";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase } from "../../src/gen/airavata/v1/admin_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import { nvidiaDriverLoaded } from "../../src/engine/cuda-libraries.js";
import { sample } from "../helpers/metrics.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, type ServerProcess, startServerProcess } from "../helpers/server.js";

const SERVER_ARGS = [
  "--model",
  modelPath("q4_0"),
  "--threads",
  "1",
  "--parallel",
  "2",
  "--context-size",
  "1024",
  "--log-level",
  "info",
];

/** Runs one of the project's scripts to its end: its exit code and what it printed. */
async function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", script, ...args], { cwd: ROOT, env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += String(d)));
  child.stderr.on("data", (d) => (stderr += String(d)));
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  return { code, stdout, stderr };
}

/** The server's "model loaded on CPU" log line, once it is there. */
async function loadedLine(server: ServerProcess): Promise<Record<string, unknown>> {
  for (;;) {
    const line = server.logs.find((l) => l.msg === "model loaded on CPU");
    if (line) return line;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("the server process", () => {
  it("health goes NOT_SERVING → SERVING around the model load, and logs the backend", async () => {
    const server = await startServerProcess(SERVER_ARGS);
    try {
      const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }));
      const seen: Status[] = [];
      for await (const { status } of health.watch({ service: "airavata.v1.GenerationService" })) {
        seen.push(status);
        if (status === Status.SERVING) break;
      }
      expect(seen).toEqual([Status.NOT_SERVING, Status.SERVING]);
      const loaded = await loadedLine(server);
      // With --gpu auto on the CPU, the line says why (here: what keeps CUDA from loading).
      expect(loaded).toMatchObject({
        backend: "cpu",
        threads: 1,
        sequences: 2,
        contextSize: 1024,
        cpuReason: expect.any(String),
        // As llama.cpp said it at load: with the default (auto) it runs it on the CPU.
        flashAttention: true,
        // The library is built on first use (CI has a C compiler and git): preloaded by default.
        threadPool: "persistent",
      });
      expect(loaded.threadPoolReason).toBeUndefined();
    } finally {
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    }
  });

  it("--flash-attention off: the load line says llama.cpp runs it off, and the model answers", async () => {
    const server = await startServerProcess([...SERVER_ARGS, "--flash-attention", "off"]);
    try {
      const loaded = await loadedLine(server);
      expect(loaded).toMatchObject({ flashAttention: false });
      const client = new AiravataClient(`127.0.0.1:${server.port}`);
      const answer = await client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 8 });
      client.close();
      expect(answer.codeName).toBe("OK");
      expect(answer.trailers["airavata-generated-tokens"]).toBe("8");
      expect(answer.text.length).toBeGreaterThan(0);
    } finally {
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    }
  });

  it("--thread-pool: a persistent pool keeps one decode thread between decodes, and the answer is the same", async () => {
    const args = SERVER_ARGS.map((a, i) => (SERVER_ARGS[i - 1] === "--threads" ? "2" : a));
    const run = async (setting: string) => {
      const server = await startServerProcess([...args, "--thread-pool", setting, "--batching", "full"]);
      try {
        const loaded = await loadedLine(server);
        const client = new AiravataClient(`127.0.0.1:${server.port}`);
        const answer = await client.generate({ prompt: "भारत की राजधानी क्या है?", temperature: 0, maxNewTokens: 24 });
        client.close();
        // Between decodes: ggml's second decode thread lives on only in a pool.
        const [engine] = enginePids(server.child.pid!);
        const threads = readdirSync(`/proc/${engine}/task`).length;
        // The engine → server hop, timed from each chunk's write (at 2 threads on 2 cores, written at once).
        const hop = await sample(`http://127.0.0.1:${server.port}`, "airavata_engine_hop_seconds_sum", { variant: "tiny.q4_0" });
        return { loaded, answer, threads, hop };
      } finally {
        server.child.kill("SIGTERM");
        expect(await server.exited).toBe(0);
      }
    };
    const pooled = await run("persistent");
    const perDecode = await run("per-decode");
    expect(pooled.loaded).toMatchObject({ threads: 2, threadPool: "persistent" });
    expect(perDecode.loaded).toMatchObject({
      threads: 2,
      threadPool: "per-decode",
      threadPoolReason: "--thread-pool per-decode",
    });
    expect(pooled.answer.codeName).toBe("OK");
    expect(pooled.answer.trailers["airavata-generated-tokens"]).toBe("24");
    expect(pooled.answer.text).toBe(perDecode.answer.text);
    expect(pooled.threads).toBe(perDecode.threads + 1);
    for (const { hop } of [pooled, perDecode]) {
      expect(hop).toBeGreaterThan(0);
      expect(hop).toBeLessThan(2);
    }
  });

  it("without a C compiler to build the pool, the engine decodes per decode and the load line says why", async () => {
    const cache = mkdtempSync(join(tmpdir(), "airavata-no-cc-"));
    const server = await startServerProcess(SERVER_ARGS, { AIRAVATA_TOOLS_CACHE: cache, CC: "airavata-no-such-cc" });
    try {
      const loaded = await loadedLine(server);
      expect(loaded).toMatchObject({
        threadPool: "per-decode",
        threadPoolReason: expect.stringMatching(/no C compiler \(airavata-no-such-cc\)/),
      });
      const client = new AiravataClient(`127.0.0.1:${server.port}`);
      const answer = await client.generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 8 });
      client.close();
      expect(answer.codeName).toBe("OK");
      expect(answer.trailers["airavata-generated-tokens"]).toBe("8");
    } finally {
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    }
  });

  it("npm run build:thread-pool builds the library into the cache and prints its path; without a compiler it says why", async () => {
    const build = (env: Record<string, string>) => runScript("src/engine/thread-pool-cli.ts", [], env);
    const cache = mkdtempSync(join(tmpdir(), "airavata-pool-"));
    try {
      const built = await build({ AIRAVATA_TOOLS_CACHE: cache });
      expect(built.code).toBe(0);
      const path = built.stdout.trim();
      expect(path.startsWith(cache)).toBe(true);
      expect(path).toMatch(/persistent-thread-pool-[0-9a-f]{12}\.so$/);
      expect(readFileSync(path).subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    } finally {
      // It holds a clone of llama.cpp's source (~200 MB) for the headers.
      rmSync(cache, { recursive: true, force: true });
    }
    const refused = await build({
      AIRAVATA_TOOLS_CACHE: mkdtempSync(join(tmpdir(), "airavata-pool-")),
      CC: "airavata-no-such-cc",
    });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/the thread pool library was not built: no C compiler \(airavata-no-such-cc\)/);
  });

  it("warns when the decode threads take every core (none at the default)", async () => {
    const THREAD_WARNING = /decode threads as cores/;
    const cores = os.availableParallelism();
    const args = SERVER_ARGS.map((a, i) => (SERVER_ARGS[i - 1] === "--threads" ? String(cores) : a));
    const server = await startServerProcess(args);
    try {
      const warning = server.logs.find((l) => THREAD_WARNING.test(String(l.msg)));
      // On one core there is nothing to leave free, so nothing to warn about.
      if (cores > 1) expect(warning).toMatchObject({ level: 40, threads: cores, cores });
      else expect(warning).toBeUndefined();
    } finally {
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    }
    const byDefault = await startServerProcess(
      SERVER_ARGS.filter((a, i) => a !== "--threads" && SERVER_ARGS[i - 1] !== "--threads"),
    );
    try {
      expect(byDefault.logs.some((l) => THREAD_WARNING.test(String(l.msg)))).toBe(false);
    } finally {
      byDefault.child.kill("SIGTERM");
      expect(await byDefault.exited).toBe(0);
    }
  });

  it("SIGTERM during a stream: the stream completes, new calls get UNAVAILABLE, exit code 0", async () => {
    const server = await startServerProcess([...SERVER_ARGS, "--context-size", "2048", "--grace-period", "60"]);
    const address = `127.0.0.1:${server.port}`;
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://${address}` }));
    for await (const { status } of health.watch({ service: "" })) if (status === Status.SERVING) break;
    const client = new AiravataClient(address);
    let streamDone = false;
    const stream = client
      .generate({ prompt: "नमस्ते", temperature: 0, maxNewTokens: 1800 }, () => {
        if (server.child.signalCode === null && !server.child.killed) server.child.kill("SIGTERM");
      })
      .finally(() => (streamDone = true));
    // The server shows it is draining through health, while the stream goes on.
    let status = Status.SERVING;
    while (status === Status.SERVING) {
      status = (await health.check({ service: "" })).status;
    }
    expect(status).toBe(Status.NOT_SERVING);
    const refused = await client.generate({ prompt: "The", raw: true });
    expect(streamDone).toBe(false);
    expect(refused.codeName).toBe("UNAVAILABLE");
    expect(refused.message).toMatch(/shutting down/);
    const finished = await stream;
    expect(finished.codeName).toBe("OK");
    expect(finished.trailers["airavata-generated-tokens"]).toBe("1800");
    expect(finished.trailers["airavata-finish-reason"]).toBe("length");
    client.close();
    expect(await server.exited).toBe(0);
    expect(server.logs.some((l) => l.msg === "stopped")).toBe(true);
  });
});

describe("SIGTERM during a swap", () => {
  it("the swap, a running call like any other, ends within the grace period; exit 0; no engine process is left", async () => {
    const TOKEN = "lifecycle-admin-token-0123456789";
    const modelsDir = mkdtempSync(join(tmpdir(), "airavata-sigterm-swap-"));
    copyFileSync(modelPath("q4_0"), join(modelsDir, "tiny.q4_0.gguf"));
    copyFileSync(modelPath("q8_0"), join(modelsDir, "tiny.q8_0.gguf"));
    const server = await startServerProcess(
      ["--models-dir", modelsDir, "--variant", "tiny.q4_0", "--threads", "1", "--parallel", "2"],
      { AIRAVATA_ADMIN_TOKEN: TOKEN, AIRAVATA_MODEL: "", HF_ENDPOINT: "https://airavata-test.invalid" },
    );
    const baseUrl = `http://127.0.0.1:${server.port}`;
    const health = createClient(Health, createGrpcTransport({ baseUrl }));
    for await (const { status } of health.watch({ service: "" })) if (status === Status.SERVING) break;
    const admin = createClient(AdminService, createGrpcTransport({ baseUrl }));
    const phases: SwapPhase[] = [];
    let failure: ConnectError | undefined;
    try {
      for await (const p of admin.swapVariant({ variantId: "tiny.q8_0" }, { headers: { authorization: `Bearer ${TOKEN}` } })) {
        phases.push(p.phase);
        if (p.phase === SwapPhase.LOADING && !server.child.killed) server.child.kill("SIGTERM");
      }
    } catch (error) {
      failure = ConnectError.from(error);
    }
    // Either it finished within the grace period, or the shutdown ended it as UNAVAILABLE: nothing else.
    if (failure) expect(failure.code).toBe(Code.Unavailable);
    else expect(phases.at(-1)).toBe(SwapPhase.DONE);
    expect(server.child.killed).toBe(true);
    expect(await server.exited).toBe(0);
    // Both engines (the serving one and the one loading) end with it: an engine whose server went
    // away exits at once, loaded or not.
    const until = Date.now() + 10_000;
    while (processesMentioning(modelsDir).length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(processesMentioning(modelsDir)).toEqual([]);
  });
});

describe("startup fallback", () => {
  it("tries the fallback order when the configured variant cannot load, and says so", async () => {
    const dir = mkdtempSync(join(tmpdir(), "airavata-fallback-"));
    // The GGUF magic, then garbage: a file that once made the header reader hang.
    writeFileSync(join(dir, "broken.gguf"), `GGUF${"x".repeat(200)}`);
    copyFileSync(modelPath("q8_0"), join(dir, "good.gguf"));
    const token = "fallback-test-token-0123456789";
    const server = await startServerProcess(
      ["--models-dir", dir, "--variant", "broken", "--fallback", "absent,good", "--threads", "1", "--log-level", "info"],
      { AIRAVATA_ADMIN_TOKEN: token, AIRAVATA_MODEL: "" },
    );
    try {
      const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }));
      for await (const { status } of health.watch({ service: "" })) if (status === Status.SERVING) break;
      const admin = createClient(AdminService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }));
      const status = await admin.getStatus({}, { headers: { authorization: `Bearer ${token}` } });
      expect(status.activeVariant).toBe("good");
      expect(status.startupNotes).toEqual([
        expect.stringMatching(
          /serving "good" after: "broken" could not be used: .*not a valid GGUF file: unsupported GGUF version.*; "absent" could not be used: no variant "absent"/,
        ),
      ]);
      const warnings = server.logs.filter((l) => l.msg === "variant failed; trying the next in the fallback order");
      expect(warnings.map((w) => w.variant)).toEqual(["broken", "absent"]);
      // The admin token is never logged.
      expect(JSON.stringify(server.logs)).not.toContain(token);
    } finally {
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    }
  });
});

describe("configuration", () => {
  async function run(args: string[], env: Record<string, string> = {}) {
    const { code, stderr } = await runScript("src/main.ts", args, env);
    return { code, stderr: stderr.trim() };
  }

  it.each([
    [["--port", "http"], {}, /--port.*'http' is invalid.*integer from 0 to 65535/],
    [["--threads", "0"], {}, /--threads.*integer from 1 to 1024/],
    [["--gpu", "tpu"], {}, /--gpu.*Allowed choices are auto, cuda, vulkan, cpu/],
    [
      ["--stream-interval", "0"],
      {},
      /--stream-interval.*expected auto, a token count from 1 to 256 \(4\), a count with a hold time/,
    ],
    [["--stream-interval", "2s"], {}, /--stream-interval.*'2s' is invalid.*token count from 1 to 256/],
    [["--stream-interval", "4/0ms"], {}, /--stream-interval.*'4\/0ms' is invalid.*hold time from 1ms to 1000ms/],
    [["--flash-attention", "yes"], {}, /--flash-attention.*Allowed choices are auto, on, off/],
    [["--thread-pool", "shared"], {}, /--thread-pool.*Allowed choices are persistent, per-decode/],
    [[], { AIRAVATA_CONTEXT_SIZE: "lots" }, /--context-size.*'lots' from env 'AIRAVATA_CONTEXT_SIZE' is invalid/],
    [["--model", "/nope/airavata.gguf"], {}, /no file at \/nope\/airavata.gguf/],
    [["--tls-cert", "package.json"], {}, /--tls-cert and --tls-key go together/],
    [["--variants", "q4_k_m=lots"], {}, /--variants: the weight of "q4_k_m" must be a whole number from 0 up/],
    [["--variants", "q4_k_m=0,q8_0=0"], {}, /--variants: the weights are all zero/],
    [[], { AIRAVATA_VARIANTS: "q4_k_m,q4_k_m" }, /--variants names a variant twice/],
    [["--variants", "q4_k_m,q8_0"], {}, /--variants and --model cannot go together/],
  ] as const)("a bad setting (%j %j) is one clear line and exit code 2", async (args, env, message) => {
    const withModel = (args as readonly string[]).includes("--model") ? [...args] : ["--model", modelPath("q4_0"), ...args];
    const { code, stderr } = await run(withModel, env);
    expect(code).toBe(2);
    expect(stderr.split("\n")).toHaveLength(1);
    expect(stderr).toMatch(message);
  });

  it("flags win over environment variables", async () => {
    const { code, stderr } = await run(["--model", modelPath("q4_0"), "--port", "bad"], { AIRAVATA_PORT: "1234" });
    expect(code).toBe(2);
    expect(stderr).toMatch(/'bad' is invalid/);
  });

  it("a port already in use: a clear message and exit code 1", async () => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", r));
    const { port } = holder.address() as AddressInfo;
    try {
      const { code, stderr } = await run(["--model", modelPath("q4_0"), "--port", String(port)]);
      expect(code).toBe(1);
      expect(stderr).toContain(`Port ${port} on 127.0.0.1 is already in use`);
      expect(stderr).toMatch(/--port or AIRAVATA_PORT/);
    } finally {
      holder.close();
    }
  });

  // Where the NVIDIA driver is loaded CUDA may well work; everywhere else it cannot.
  it.runIf(!nvidiaDriverLoaded())(
    "--gpu cuda without CUDA: a clear message naming what is missing, at once, exit 1",
    async () => {
      // No compile from source in between (node-llama-cpp's default when no prebuilt loads): the test's timeout.
      const { code, stderr } = await run(["--model", modelPath("q4_0"), "--gpu", "cuda", "--port", "0"]);
      expect(code).toBe(1);
      expect(stderr).toMatch(/--gpu cuda: the CUDA backend cannot load: /);
      expect(stderr).toMatch(/libcuda\.so\.1/);
      expect(stderr).toMatch(/--gpu auto runs on the CPU instead/);
    },
    60_000,
  );

  it("offline without the default variant, it says what is missing and how to fix it", async () => {
    const empty = mkdtempSync(join(tmpdir(), "airavata-models-"));
    // A host that cannot resolve stands for "offline" wherever the test runs.
    const { code, stderr } = await run(["--models-dir", empty], {
      AIRAVATA_MODEL: "",
      HF_ENDPOINT: "https://airavata-test.invalid",
    });
    expect(code).toBe(1);
    expect(stderr).toMatch(
      /variant "q4_k_m" is not downloaded \(.*Airavata\.Q4_K_M\.gguf\) and airavata-test\.invalid cannot be reached/,
    );
    expect(stderr).toMatch(/npm run pull -- q4_k_m/);
    expect(stderr).toMatch(/npm start -- --model /);
    expect(stderr).toMatch(/npm run demo/);
  });
});
