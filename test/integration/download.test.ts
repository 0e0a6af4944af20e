import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AiravataClient } from "../../clients/grpc-client.js";
import { AdminService, SwapPhase } from "../../src/gen/airavata/v1/admin_pb.js";
import { sha256File } from "../../src/variants/download.js";
import { type AdminClient, swapTo } from "../helpers/admin.js";
import { type FileServer, startFileServer } from "../helpers/file-server.js";
import { modelPath } from "../helpers/models.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
const TOKEN = "test-admin-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };

let files: FileServer;
let server: TestServer;
let modelsDir: string;
let manifest: string;
let admin: AdminClient;

beforeAll(async () => {
  files = await startFileServer(
    { "tiny.q8_0.gguf": modelPath("q8_0"), "tiny.f16.gguf": modelPath("f16") },
    { cutFirstDownload: true },
  );
  modelsDir = mkdtempSync(join(tmpdir(), "airavata-downloads-"));
  manifest = join(modelsDir, "..", `${modelsDir.split("/").pop()}-manifest.json`);
  writeFileSync(
    manifest,
    JSON.stringify({
      variants: [
        {
          id: "remote.q8_0",
          source: files.url("tiny.q8_0.gguf"),
          description: "served by the test",
          sha256: await sha256File(modelPath("q8_0")),
        },
        { id: "badsum.f16", source: files.url("tiny.f16.gguf"), sha256: "0".repeat(64) },
        { id: "pulled.f16", source: files.url("tiny.f16.gguf"), sha256: await sha256File(modelPath("f16")) },
      ],
    }),
  );
  server = await startTestServer({ manifestPath: manifest, modelsDir, adminToken: TOKEN });
  admin = createClient(AdminService, createGrpcTransport({ baseUrl: server.baseUrl }));
});
afterAll(async () => {
  await server.app.shutdown();
  await files.close();
});

const swap = (variantId: string) => swapTo(admin, variantId, auth);

describe("downloads", () => {
  it("a swap downloads a missing variant with progress, survives a cut connection by resuming, then serves it", async () => {
    const target = join(modelsDir, "remote.q8_0.gguf");
    expect(existsSync(target)).toBe(false);
    const { events, error } = await swap("remote.q8_0");
    expect(error).toBeUndefined();
    const downloading = events.filter((e) => e.phase === SwapPhase.DOWNLOADING);
    expect(downloading.length).toBeGreaterThan(1);
    const last = downloading.at(-1)!;
    expect(last.bytesTotal).toBeGreaterThan(0n);
    expect(last.bytesDone).toBe(last.bytesTotal);
    expect(events.at(-1)?.phase).toBe(SwapPhase.DONE);
    // The first transfer was cut; later requests asked for ranges, not the whole file again.
    const requests = files.requests.filter((r) => r.name === "tiny.q8_0.gguf" && r.method === "GET");
    expect(requests.length).toBeGreaterThan(1);
    expect(requests.slice(1).every((r) => r.range !== undefined)).toBe(true);
    expect(await sha256File(target)).toBe(await sha256File(modelPath("q8_0")));
    const client = new AiravataClient(server.address);
    const outcome = await client.generate({ prompt: "The", raw: true, temperature: 0 });
    client.close();
    expect(outcome.trailers["airavata-variant"]).toBe("remote.q8_0");
  });

  it("a checksum mismatch is refused and leaves nothing in place", async () => {
    const { error } = await swap("badsum.f16");
    expect(error).toMatchObject({ code: Code.FailedPrecondition, rawMessage: expect.stringMatching(/checksum mismatch/) });
    expect(existsSync(join(modelsDir, "badsum.f16.gguf"))).toBe(false);
    expect(readdirSync(join(modelsDir, ".partial")).filter((f) => f.startsWith("badsum"))).toEqual([]);
    expect((await admin.getStatus({}, auth)).activeVariant).toBe("remote.q8_0");
  });

  it("npm run pull fetches a variant ahead of time", async () => {
    const { stdout } = await exec(process.execPath, ["--import", "tsx", "src/variants/pull-cli.ts", "pulled.f16"], {
      cwd: ROOT,
      env: { ...process.env, AIRAVATA_MODELS_DIR: modelsDir, AIRAVATA_MANIFEST: manifest },
    });
    expect(stdout).toMatch(/pulled\.f16: done, F16, 0\.\dM parameters, 1\d\.\d\d bits per weight/);
    const { variants } = await admin.listVariants({}, auth);
    expect(variants.find((v) => v.id === "pulled.f16")).toMatchObject({ downloaded: true, usable: true, quantization: "F16" });
  });
});
