/**
 * Downloads meeting the disk and the operator: a models folder that stops
 * taking files before or during a pull, and SIGTERM during `npm run pull`, a
 * swap's download and the startup's download. Each time the old variant keeps
 * serving (where there is one), the error names the folder, and no partial
 * file is left behind in the models folder or its staging folder.
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase } from "../../src/gen/airavata/v1/admin_pb.js";
import { sha256File } from "../../src/variants/download.js";
import { type AdminClient, swapTo } from "../helpers/admin.js";
import { type FileServer, startFileServer } from "../helpers/file-server.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, startServerProcess, startTestServer, type TestServer } from "../helpers/server.js";
import { makeUnwritable } from "../helpers/unwritable.js";

const exec = promisify(execFile);
const TOKEN = "test-admin-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };

/** Bigger than the downloader's 5 MiB write chunk, so a partial file is on disk while it is held. */
const BIG_BYTES = 12 * 2 ** 20;
const HOLD_AFTER_BIG = 11 * 2 ** 20;

interface Setup {
  files: FileServer;
  modelsDir: string;
  manifest: string;
  staging: string;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(holdAfterBytes: number): Promise<Setup> {
  const work = mkdtempSync(join(tmpdir(), "airavata-download-faults-"));
  const big = join(work, "big.bin");
  writeFileSync(big, randomBytes(BIG_BYTES));
  const files = await startFileServer({ "tiny.q8_0.gguf": modelPath("q8_0"), "big.gguf": big }, { holdAfterBytes });
  cleanups.push(() => files.close());
  const modelsDir = join(work, "models");
  const manifest = join(work, "manifest.json");
  writeFileSync(
    manifest,
    JSON.stringify({
      variants: [
        { id: "remote.q8_0", source: files.url("tiny.q8_0.gguf"), sha256: await sha256File(modelPath("q8_0")) },
        { id: "big", source: files.url("big.gguf"), sha256: await sha256File(big) },
      ],
    }),
  );
  mkdirSync(modelsDir);
  return { files, modelsDir, manifest, staging: join(modelsDir, ".partial") };
}

/** Names in `dir` (none when it does not exist). */
const namesIn = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

async function until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const swap = (admin: AdminClient, variantId: string) => swapTo(admin, variantId, auth);

async function inServer(s: Setup): Promise<{ server: TestServer; admin: AdminClient }> {
  const server = await startTestServer({ manifestPath: s.manifest, modelsDir: s.modelsDir, adminToken: TOKEN });
  cleanups.push(() => server.app.shutdown());
  return { server, admin: createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl })) };
}

async function generateOn(server: TestServer): Promise<string | undefined> {
  const client = new AiravataClient(server.address);
  const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
  client.close();
  expect(outcome.text).toBe("end of story🙏");
  return outcome.trailers["airavata-variant"];
}

describe("a models folder that stops taking files", () => {
  it("during a swap's download: FAILED_PRECONDITION naming the folder, the old variant serves on, nothing left; writable again, the swap works", async () => {
    const s = await setup(300_000);
    const { server, admin } = await inServer(s);
    const before = (await admin.getStatus({}, auth)).activeVariant;
    const swapping = swap(admin, "remote.q8_0");
    await s.files.holding();
    const restore = makeUnwritable(s.modelsDir);
    cleanups.push(restore);
    s.files.release();
    const { events, error } = await swapping;
    expect(error?.code).toBe(Code.FailedPrecondition);
    expect(error?.rawMessage).toMatch(new RegExp(`^cannot write to the models folder ${s.modelsDir}: (EPERM|EACCES)`));
    expect(events.some((e) => e.phase === SwapPhase.DOWNLOADING)).toBe(true);
    expect(events.some((e) => e.phase === SwapPhase.SWITCHED)).toBe(false);
    expect((await admin.getStatus({}, auth)).activeVariant).toBe(before);
    expect(await generateOn(server)).toBe(before);
    expect(namesIn(s.modelsDir).filter((n) => !n.startsWith("."))).toEqual([]);
    expect(namesIn(s.staging)).toEqual([]);
    const { variants } = await admin.listVariants({}, auth);
    expect(variants.find((v) => v.id === "remote.q8_0")).toMatchObject({ downloaded: false, active: false });

    restore();
    const again = await swap(admin, "remote.q8_0");
    expect(again.error).toBeUndefined();
    expect(await generateOn(server)).toBe("remote.q8_0");
  });

  it("before a download: the swap and `npm run pull` refuse at once, naming the folder, without asking the network", async () => {
    const s = await setup(300_000);
    s.files.release();
    const { admin } = await inServer(s);
    const before = (await admin.getStatus({}, auth)).activeVariant;
    cleanups.push(makeUnwritable(s.modelsDir));
    const { error } = await swap(admin, "remote.q8_0");
    expect(error?.code).toBe(Code.FailedPrecondition);
    expect(error?.rawMessage).toMatch(/^cannot write to the models folder .*: (EPERM|EACCES)/);
    expect((await admin.getStatus({}, auth)).activeVariant).toBe(before);

    const pulled = await exec(process.execPath, ["--import", "tsx", "src/variants/pull-cli.ts", "remote.q8_0"], {
      cwd: ROOT,
      env: { ...process.env, AIRAVATA_MODELS_DIR: s.modelsDir, AIRAVATA_MANIFEST: s.manifest },
    }).then(
      () => ({ code: 0, stderr: "" }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(pulled.code).toBe(1);
    expect(pulled.stderr).toMatch(new RegExp(`remote\\.q8_0: cannot write to the models folder ${s.modelsDir}: (EPERM|EACCES)`));
    expect(s.files.requests.filter((r) => r.method === "GET")).toEqual([]);
  });
});

describe("SIGTERM during a download", () => {
  it("npm run pull: exits 143 with a message, its partial file removed", async () => {
    const s = await setup(HOLD_AFTER_BIG);
    const child = spawn(process.execPath, ["--import", "tsx", "src/variants/pull-cli.ts", "big"], {
      cwd: ROOT,
      env: { ...process.env, AIRAVATA_MODELS_DIR: s.modelsDir, AIRAVATA_MANIFEST: s.manifest },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => (output += String(d)));
    child.stderr.on("data", (d) => (output += String(d)));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await s.files.holding();
    await until(() => namesIn(s.staging).length > 0, "a partial file on disk");
    child.kill("SIGTERM");
    expect(await exited).toBe(143);
    expect(output).toMatch(/big: stopped by SIGTERM; the partial download was removed/);
    expect(namesIn(s.staging)).toEqual([]);
    expect(namesIn(s.modelsDir).filter((n) => !n.startsWith("."))).toEqual([]);
  });

  it("a swap's download: the swap ends UNAVAILABLE, the server exits 0 without waiting out the grace period, nothing left", async () => {
    const s = await setup(HOLD_AFTER_BIG);
    const server = await startServerProcess(["--model", modelPath("q4_0"), "--threads", "1", "--grace-period", "60"], {
      AIRAVATA_MODELS_DIR: s.modelsDir,
      AIRAVATA_MANIFEST: s.manifest,
      AIRAVATA_ADMIN_TOKEN: TOKEN,
    });
    cleanups.push(() => void server.child.kill("SIGKILL"));
    await until(() => server.logs.some((l) => l.msg === "model loaded on CPU"), "the model to load");
    const admin = createClient(AdminService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }));
    const swapping = swap(admin, "big");
    await s.files.holding();
    await until(() => namesIn(s.staging).length > 0, "a partial file on disk");
    const stopAt = Date.now();
    server.child.kill("SIGTERM");
    const { events, error } = await swapping;
    expect(events.some((e) => e.phase === SwapPhase.DOWNLOADING)).toBe(true);
    expect(error?.code).toBe(Code.Unavailable);
    expect(error?.rawMessage).toMatch(/shutting down; the download was stopped and its partial file removed/);
    expect(await server.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(15_000);
    expect(namesIn(s.staging)).toEqual([]);
    expect(namesIn(s.modelsDir).filter((n) => !n.startsWith("."))).toEqual([]);
  });

  it("the startup's download of its variant: exits 0, nothing left, no fallback tried", async () => {
    const s = await setup(HOLD_AFTER_BIG);
    const server = await startServerProcess(["--variant", "big", "--fallback", "remote.q8_0", "--threads", "1"], {
      AIRAVATA_MODELS_DIR: s.modelsDir,
      AIRAVATA_MANIFEST: s.manifest,
    });
    cleanups.push(() => void server.child.kill("SIGKILL"));
    await s.files.holding();
    await until(() => namesIn(s.staging).length > 0, "a partial file on disk");
    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
    expect(server.logs.some((l) => l.msg === "stopped during startup")).toBe(true);
    expect(s.files.requests.some((r) => r.name === "tiny.q8_0.gguf")).toBe(false);
    expect(namesIn(s.staging)).toEqual([]);
    expect(namesIn(s.modelsDir).filter((n) => !n.startsWith("."))).toEqual([]);
  });
});
