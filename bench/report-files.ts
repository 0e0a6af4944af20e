/** Writes a run's report to `<out>/<name>.json` (dated) and `<out>/<name>.md`, and prints the markdown. */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export function writeReport(out: string, name: string, json: object, markdown: string): void {
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, `${name}.json`), `${JSON.stringify({ date: new Date().toISOString(), ...json }, null, 2)}\n`);
  writeFileSync(join(out, `${name}.md`), markdown);
  console.log(markdown);
}
