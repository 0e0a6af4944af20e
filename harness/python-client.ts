/**
 * Python's grpcio as a client of the service: stubs generated from proto/
 * with Debian's protoc and grpc_python_plugin, scripts in harness/python/ run
 * by Debian's Python (`apt-get install python3-grpcio protobuf-compiler
 * protobuf-compiler-grpc`, which `.ci/run` does).
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** Debian's interpreter, the one python3-grpcio is installed for (a pyenv `python3` may lack it). */
export const PYTHON = process.env.AIRAVATA_PYTHON ?? "/usr/bin/python3";

/** Generates the Python stubs of proto/ into a new folder; throws, saying what to install, when the tools are missing. */
export function pythonStubs(): string {
  const out = mkdtempSync(join(tmpdir(), "airavata-py-"));
  try {
    execFileSync("protoc", [
      `-I${join(ROOT, "proto")}`,
      `--python_out=${out}`,
      `--grpc_out=${out}`,
      "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
      "airavata/v1/generation.proto",
      "airavata/v1/admin.proto",
    ]);
    execFileSync(PYTHON, ["-c", "import grpc"]);
  } catch (error) {
    throw new Error(
      "the Python client needs Debian's python3-grpcio, protobuf-compiler and protobuf-compiler-grpc " +
        `(apt-get install python3-grpcio protobuf-compiler protobuf-compiler-grpc): ${(error as Error).message}`,
    );
  }
  return out;
}

/**
 * Runs `harness/python/<script>` with the stubs folder first, then `args`; its
 * last line of output as JSON. Asynchronous, so that a service in this very
 * process keeps answering meanwhile.
 */
export function runPython<T>(stubs: string, script: string, args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(PYTHON, [join(ROOT, "harness", "python", script), stubs, ...args], { encoding: "utf8" }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${script} failed: ${stderr || error.message}`));
      else resolve(JSON.parse(stdout.trim().split("\n").at(-1)!) as T);
    });
  });
}
