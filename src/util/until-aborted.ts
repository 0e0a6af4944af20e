/**
 * An async iterable's values until a signal fires; then the signal's reason
 * is thrown at once, without waiting for the next value. The source is closed
 * in the background: a call that has to end now (its deadline is about to
 * pass) must not wait for the engine to confirm the stop — the source's own
 * cleanup, which frees the engine's sequence, still runs to its end.
 */
export async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let onAbort: (() => void) | undefined;
  const stopped = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  stopped.catch(() => {});
  let finished = false;
  try {
    for (;;) {
      const next = it.next();
      // Once the signal has won, a later failure of the source has no one left to tell.
      next.catch(() => {});
      const result = await Promise.race([next, stopped]);
      if (result.done) {
        finished = true;
        return;
      }
      yield result.value;
    }
  } finally {
    signal.removeEventListener("abort", onAbort!);
    if (!finished) it.return?.().catch(() => {});
  }
}
