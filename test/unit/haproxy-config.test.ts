import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { HAPROXY_DEFAULTS, haproxyConfig } from "../../deploy/haproxy.js";

describe("the fleet's HAProxy configuration", () => {
  it("deploy/haproxy.cfg is the one written for the defaults, and HAProxy accepts it", () => {
    const committed = readFileSync(new URL("../../deploy/haproxy.cfg", import.meta.url), "utf8");
    expect(committed).toBe(haproxyConfig(HAPROXY_DEFAULTS));
    // HAProxy's own check (`haproxy -c`): a typo in a directive fails here.
    execFileSync("haproxy", ["-c", "-q", "-f", fileURLToPath(new URL("../../deploy/haproxy.cfg", import.meta.url))]);
    const broken = join(mkdtempSync(join(tmpdir(), "airavata-haproxy-")), "haproxy.cfg");
    writeFileSync(broken, committed.replace("balance leastconn", "balance fewest-please"));
    expect(() => execFileSync("haproxy", ["-c", "-q", "-f", broken], { stdio: "pipe" })).toThrow();
  });
});
