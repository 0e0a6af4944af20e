/**
 * Turns generated tokens into streamed text that is always whole UTF-8 and
 * that concatenates to exactly the detokenized generation. Devanagari often
 * arrives as byte-fallback tokens (ॐ as <0xE0><0xA5><0x90>): text is held
 * until the character is complete. Text that may be the start of a stop
 * string is held too, so a stop string is never sent.
 */

/** Detokenizes `tokens` as the continuation of `lastTokens`. */
export type Detokenize = (tokens: readonly number[], lastTokens: readonly number[]) => string;

export interface Emission {
  text: string;
  tokens: number[];
}

const REPLACEMENT = "\uFFFD";
/** A UTF-8 character has at most 4 bytes, so at most 4 byte tokens. */
const MAX_PENDING = 4;
const CONTEXT_TOKENS = 4;

export class TextStream {
  private pending: number[] = [];
  private recent: number[] = [];
  private held = "";
  private heldTokens: number[] = [];
  private stoppedAt: string | undefined;

  constructor(
    private readonly detokenize: Detokenize,
    private readonly stops: readonly string[] = [],
  ) {}

  /** The stop string that ended the text, once one has appeared. */
  get stopSequence(): string | undefined {
    return this.stoppedAt;
  }

  push(token: number): Emission {
    if (this.stoppedAt !== undefined) return { text: "", tokens: [token] };
    this.pending.push(token);
    const text = this.detokenize(this.pending, this.recent);
    if (text.endsWith(REPLACEMENT) && this.pending.length < MAX_PENDING) return { text: "", tokens: [] };
    this.commit(text);
    return this.release(false);
  }

  /** Everything still held, at the end of the generation. */
  end(): Emission {
    if (this.pending.length > 0 && this.stoppedAt === undefined) {
      this.commit(this.detokenize(this.pending, this.recent));
    }
    const out = this.release(true);
    out.tokens.push(...this.pending);
    this.pending = [];
    return out;
  }

  private commit(text: string): void {
    this.recent = [...this.recent, ...this.pending].slice(-CONTEXT_TOKENS);
    this.held += text;
    this.heldTokens.push(...this.pending);
    this.pending = [];
  }

  private release(final: boolean): Emission {
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.held.indexOf(stop);
      if (at !== -1 && (cut === -1 || at < cut)) {
        cut = at;
        this.stoppedAt = stop;
      }
    }
    let text: string;
    if (cut !== -1) {
      text = this.held.slice(0, cut);
      this.held = "";
    } else {
      const keep = final ? 0 : this.longestStopPrefix();
      text = this.held.slice(0, this.held.length - keep);
      this.held = this.held.slice(this.held.length - keep);
    }
    if (text === "" && cut === -1 && !final) return { text, tokens: [] };
    const tokens = this.heldTokens;
    this.heldTokens = [];
    return { text, tokens };
  }

  /** Length of the longest end of the held text that begins some stop string. */
  private longestStopPrefix(): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, this.held.length); n > best; n--) {
        if (this.held.endsWith(stop.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
