/** Reading the service's /metrics as a test (or a person with curl) would. */

/** The value of one sample, e.g. `airavata_requests_total{...}`, or 0 if absent. */
export async function sample(baseUrl: string, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const inner = line.slice(name.length + 1, line.indexOf("}"));
    const have = inner.split(",");
    if (want.every((w) => have.includes(w))) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return 0;
}

/** Polls until `read` returns at least `min`, for at most `ms`. */
export async function eventually(read: () => Promise<number>, min: number, ms = 5000): Promise<number> {
  const until = Date.now() + ms;
  let value = await read();
  while (value < min && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    value = await read();
  }
  return value;
}

/** Polls until the service reports no running and no queued calls (a cancel reaches it a moment after the client). */
export async function idle(baseUrl: string, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const busy =
      (await sample(baseUrl, "airavata_num_requests_running", {})) + (await sample(baseUrl, "airavata_num_requests_waiting", {}));
    if (busy === 0) return;
    if (Date.now() > until) throw new Error(`the service still has ${busy} calls after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
