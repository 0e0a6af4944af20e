/**
 * Token-level statistics of a set of concurrent streams, the same way for
 * every target: time to first token, inter-token latency, time per output
 * token, end-to-end latency (p50/p95/p99), tokens/s per stream and aggregate.
 */

/** One stream: when it was sent, and when each of its tokens arrived (ms, same clock). */
export interface StreamTrace {
  sentAt: number;
  /** Arrival time of each token; tokens that arrive together share a time. */
  tokenTimes: number[];
}

/**
 * Streams at least `tokens` tokens through a target, `streams` at a time, before it is measured:
 * a fresh process's JavaScript is still being compiled over its first few thousand tokens.
 * `trace(i)` runs stream i.
 */
export async function warmUp(tokens: number, streams: number, trace: (i: number) => Promise<StreamTrace>): Promise<void> {
  for (let warmed = 0; warmed < tokens;) {
    const traces = await Promise.all(Array.from({ length: streams }, (_, i) => trace(i)));
    const got = traces.reduce((n, t) => n + t.tokenTimes.length, 0);
    if (got === 0) throw new Error("the warm-up streamed no tokens");
    warmed += got;
  }
}

export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
}

export interface RunStats {
  streams: number;
  ttftMs: Percentiles;
  interTokenMs: Percentiles;
  timePerOutputTokenMs: Percentiles;
  e2eMs: Percentiles;
  perStreamTokensPerSecond: number;
  aggregateTokensPerSecond: number;
}

export function percentiles(values: readonly number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number) => (s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!);
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
}

/** The middle value (the mean of the two middle ones for an even count): for a few rounds, unlike a nearest-rank p50. */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return 0;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Statistics over several rounds of `streams` concurrent traces each. */
export function summarize(rounds: readonly (readonly StreamTrace[])[]): RunStats {
  const ttft: number[] = [];
  const itl: number[] = [];
  const tpot: number[] = [];
  const e2e: number[] = [];
  const perStream: number[] = [];
  const aggregate: number[] = [];
  for (const traces of rounds) {
    let tokens = 0;
    const start = Math.min(...traces.map((t) => t.sentAt));
    const end = Math.max(...traces.map((t) => t.tokenTimes.at(-1) ?? t.sentAt));
    for (const t of traces) {
      const times = t.tokenTimes;
      if (times.length === 0) continue;
      tokens += times.length;
      ttft.push(times[0]! - t.sentAt);
      e2e.push(times.at(-1)! - t.sentAt);
      for (let i = 1; i < times.length; i++) itl.push(times[i]! - times[i - 1]!);
      if (times.length > 1) {
        const decodeMs = times.at(-1)! - times[0]!;
        tpot.push(decodeMs / (times.length - 1));
        perStream.push((times.length - 1) / (decodeMs / 1000));
      }
    }
    aggregate.push(tokens / ((end - start) / 1000));
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return {
    streams: rounds[0]?.length ?? 0,
    ttftMs: percentiles(ttft),
    interTokenMs: percentiles(itl),
    timePerOutputTokenMs: percentiles(tpot),
    e2eMs: percentiles(e2e),
    perStreamTokensPerSecond: mean(perStream),
    aggregateTokensPerSecond: median(aggregate),
  };
}
