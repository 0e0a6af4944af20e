/**
 * Makes a folder refuse new files, for the "disk refused the write" faults.
 * Permission bits are enough for an ordinary user; root (CI runs as root)
 * ignores them, so then the folder is also made immutable (`chattr +i`,
 * which root's writes obey too). Throws when neither works, rather than let a
 * test pass on a folder that still takes files.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

function takesFiles(dir: string): boolean {
  const probe = join(dir, ".probe");
  try {
    writeFileSync(probe, "", { flag: "wx" });
    rmSync(probe);
    return true;
  } catch {
    return false;
  }
}

/** Returns a function that makes `dir` writable again. */
export function makeUnwritable(dir: string): () => void {
  chmodSync(dir, 0o555);
  let immutable = false;
  if (takesFiles(dir)) {
    execFileSync("chattr", ["+i", dir]);
    immutable = true;
  }
  if (takesFiles(dir)) throw new Error(`${dir} still takes new files after chmod 555 and chattr +i`);
  return () => {
    if (immutable) execFileSync("chattr", ["-i", dir]);
    chmodSync(dir, 0o755);
  };
}
