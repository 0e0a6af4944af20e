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
import type { Emission } from "./text-stream.js";

/**
 * `{ tokens: N }`: a message once N tokens are ready (1: every token alone).
 * `{ ms: T }`: a message at most every T ms; a token decoded sooner waits for
 * the next message, none longer than T ms, so a decode slower than one token
 * in T ms sends every token at once.
 */
export type StreamInterval = { tokens: number } | { ms: number };

export const EVERY_TOKEN: StreamInterval = { tokens: 1 };

/** "4" → 4 tokens, "20ms" → 20 ms; undefined when the text is neither. */
export function parseStreamInterval(text: string): StreamInterval | undefined {
  const match = /^\s*(\d+)\s*(ms)?\s*$/.exec(text);
  if (!match) return undefined;
  return match[2] ? { ms: Number(match[1]) } : { tokens: Number(match[1]) };
}

export function formatStreamInterval(interval: StreamInterval): string {
  return "ms" in interval ? `${interval.ms}ms` : String(interval.tokens);
}

/** Paces one generation's stream; `send` gets each message as it leaves. */
export class StreamPacer {
  private held: Emission = { text: "", tokens: [] };
  private sent = 0;
  private lastSentAt = 0;
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
    this.held = { text: this.held.text + emission.text, tokens: [...this.held.tokens, ...emission.tokens] };
    if (this.sent === 0) return this.flush();
    if ("tokens" in interval) {
      if (this.held.tokens.length >= interval.tokens) this.flush();
      return;
    }
    const due = this.lastSentAt + interval.ms;
    if (this.now() >= due) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), due - this.now());
  }

  /** What is still held, for the generation's last message; nothing is sent after this. */
  end(): Emission {
    clearTimeout(this.timer);
    this.timer = undefined;
    const rest = this.held;
    this.held = { text: "", tokens: [] };
    return rest;
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const held = this.held;
    this.held = { text: "", tokens: [] };
    if (held.text !== "" || held.tokens.length > 0) this.deliver(held);
  }

  private deliver(emission: Emission): void {
    this.sent++;
    this.lastSentAt = this.now();
    this.send(emission);
  }
}
