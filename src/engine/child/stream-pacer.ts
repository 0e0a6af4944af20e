/**
 * Groups what a generation releases into streamed messages. Each message
 * costs the service about the same CPU whatever it carries (~300 µs through
 * connect-node and HTTP/2 on this project's 2-core machines, see
 * bench/results/message-cost.md), and with every core decoding that time comes
 * out of the decode. Tokens that are ready close together can share a message
 * at no cost a reader notices; a slow decode must not be held back at all.
 *
 * The first piece always leaves alone, so time to first token never moves,
 * and whatever is held when the generation ends goes with its end.
 */
import type { StreamInterval } from "../../generation.js";
import type { Emission } from "./text-stream.js";

/** Paces one generation's stream; `send` gets each message as it leaves. */
export class StreamPacer {
  private held: Emission = { text: "", tokens: [] };
  private sentAny = false;
  private lastSentAt = 0;
  private lastPushAt = 0;
  /** When the oldest piece in `held` came; undefined while nothing is held. */
  private heldSince: number | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly interval: StreamInterval,
    private readonly send: (emission: Emission) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes what the text stream released for one token. */
  push(emission: Emission): void {
    if (emission.text === "" && emission.tokens.length === 0) return;
    const { interval } = this;
    if ("tokens" in interval && interval.tokens === 1) {
      this.deliver(emission);
      return;
    }
    const now = this.now();
    const gap = now - this.lastPushAt;
    this.lastPushAt = now;
    // `held` is a fresh object after each message, so it is added to in place.
    this.held.text += emission.text;
    this.held.tokens.push(...emission.tokens);
    if (!this.sentAny) return this.flush();
    if ("tokens" in interval) {
      if (this.held.tokens.length >= interval.tokens) return this.flush();
      if (interval.holdMs === undefined) return;
      this.heldSince ??= now;
      // Held only while the next token, a gap like the last one away, can still join it in time.
      const due = this.heldSince + interval.holdMs;
      if (now + gap >= due) return this.flush();
      this.timer ??= setTimeout(() => this.flush(), due - now);
      return;
    }
    const wait = this.lastSentAt + interval.ms - now;
    if (wait <= 0) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), wait);
  }

  /** What is still held, for the generation's last message; nothing is sent after this. */
  end(): Emission {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.heldSince = undefined;
    const rest = this.held;
    this.held = { text: "", tokens: [] };
    return rest;
  }

  private flush(): void {
    const held = this.end();
    if (held.text !== "" || held.tokens.length > 0) this.deliver(held);
  }

  private deliver(emission: Emission): void {
    this.sentAny = true;
    this.lastSentAt = this.now();
    this.send(emission);
  }
}
