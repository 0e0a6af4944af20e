/**
 * `npm run pull -- <id> [<id>…]`: downloads catalog variants ahead of time,
 * with progress, resume and checksum check, into the models folder.
 * Reads the same AIRAVATA_MODELS_DIR and AIRAVATA_MANIFEST as the service.
 * SIGTERM or Ctrl-C stops it with nothing half-written left behind (exit
 * 143 / 130); a download cut by the network is resumed by the next pull.
 */
import { existsSync } from "node:fs";
import os from "node:os";
import { Command } from "commander";
import { Catalog } from "./catalog.js";
import { downloadVariant, isRemote } from "./download.js";
import { inspectGguf } from "./gguf-inspect.js";

const program = new Command("pull")
  .description("download Airavata variants into the models folder")
  .argument("<ids...>", "catalog ids, e.g. q4_k_m q8_0")
  .option("--models-dir <dir>", "models folder (env AIRAVATA_MODELS_DIR)", process.env.AIRAVATA_MODELS_DIR || "models")
  .option("--manifest <path>", "manifest of extra variants (env AIRAVATA_MANIFEST)", process.env.AIRAVATA_MANIFEST || undefined)
  .parse();

const opts = program.opts<{ modelsDir: string; manifest?: string }>();
const catalog = await Catalog.load({ modelsDir: opts.modelsDir, manifestPath: opts.manifest });
const stop = new AbortController();
let stoppedBy: NodeJS.Signals | undefined;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    stoppedBy = signal;
    stop.abort(new Error(`stopped by ${signal}; the partial download was removed`));
  });
}
let failed = false;
for (const id of program.args) {
  if (stoppedBy) break;
  try {
    const entry = catalog.get(id);
    if (existsSync(entry.path)) {
      console.log(`${id}: already at ${entry.path}`);
      continue;
    }
    if (!isRemote(entry)) throw new Error(`its file is missing: ${entry.path}`);
    console.log(`${id}: downloading ${entry.source} → ${entry.path}`);
    let last = -1;
    await downloadVariant(
      entry,
      ({ bytesDone, bytesTotal }) => {
        const percent = bytesTotal > 0 ? Math.floor((100 * bytesDone) / bytesTotal) : 0;
        if (percent === last) return;
        last = percent;
        const line = `${id}: ${percent}% (${(bytesDone / 1e6).toFixed(1)} of ${(bytesTotal / 1e6).toFixed(1)} MB)`;
        if (process.stdout.isTTY) process.stdout.write(`\r${line}`);
        else if (percent % 10 === 0) console.log(line);
      },
      stop.signal,
    );
    if (process.stdout.isTTY) process.stdout.write("\n");
    const summary = await inspectGguf(entry.path);
    console.log(
      summary.usable
        ? `${id}: done, ${summary.quantization}, ${(summary.parameters / 1e6).toFixed(1)}M parameters, ${summary.bitsPerWeight.toFixed(2)} bits per weight`
        : `${id}: downloaded, but it cannot be used: ${summary.reason}`,
    );
  } catch (error) {
    failed = true;
    console.error(`${id}: ${error instanceof Error ? error.message : String(error)}`);
  }
}
process.exit(stoppedBy ? 128 + os.constants.signals[stoppedBy] : failed ? 1 : 0);
