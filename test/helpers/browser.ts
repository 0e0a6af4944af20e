/** Finding the real Chromium the browser tests drive (Debian's package, installed by .ci/run). */
import { existsSync } from "node:fs";

/** Debian's package puts it at /usr/bin/chromium; CHROMIUM_PATH names another. */
export function chromiumPath(): string {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].filter(
    (p): p is string => p !== undefined,
  );
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error("Chromium is not installed: apt-get install chromium (.ci/run does it), or set CHROMIUM_PATH");
  return found;
}
