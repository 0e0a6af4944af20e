/** Whether ghz is here: a Go program in neither npm nor Debian, so only where a developer installed it. */
import { spawnSync } from "node:child_process";

export const ghzInstalled = spawnSync(process.env.GHZ ?? "ghz", ["--version"]).status === 0;
