import { describe, expect, it } from "vitest";
import { TextStream } from "../../src/engine/child/text-stream.js";

// A byte-level vocabulary: token n is the byte list VOCAB[n]; decoding a token
// list that ends inside a character yields U+FFFD, as llama.cpp's does.
const enc = new TextEncoder();
const VOCAB: number[][] = [
  [...enc.encode("Hello")],
  [...enc.encode(" world")],
  [0xe0],
  [0xa5],
  [0x90], // ॐ in three byte tokens
  [0xf0],
  [0x9f],
  [0x99],
  [0x8f], // 🙏 in four
  [...enc.encode(" नमस्ते")],
  [...enc.encode("STOP")],
  [...enc.encode("ST")],
  [...enc.encode("OP!")],
];
const detokenize = (tokens: readonly number[]) => new TextDecoder().decode(Uint8Array.from(tokens.flatMap((t) => VOCAB[t]!)));

function run(tokens: number[], stops: string[] = []) {
  const stream = new TextStream(detokenize, stops);
  const chunks: string[] = [];
  const emitted: number[] = [];
  for (const t of tokens) {
    const e = stream.push(t);
    if (e.text) chunks.push(e.text);
    emitted.push(...e.tokens);
    if (stream.stopSequence !== undefined) break;
  }
  const last = stream.end();
  if (last.text) chunks.push(last.text);
  emitted.push(...last.tokens);
  return { chunks, emitted, stop: stream.stopSequence };
}

describe("TextStream", () => {
  it("holds a byte-fallback character until it is complete, in the middle of a text", () => {
    const { chunks, emitted } = run([0, 2, 3, 4, 1]);
    expect(chunks).toEqual(["Hello", "ॐ", " world"]);
    expect(chunks.join("")).toBe(detokenize([0, 2, 3, 4, 1]));
    expect(emitted).toEqual([0, 2, 3, 4, 1]);
  });

  it("ends with a character split over four byte tokens", () => {
    const { chunks } = run([9, 5, 6, 7, 8]);
    expect(chunks).toEqual([" नमस्ते", "🙏"]);
    for (const c of chunks) expect(c).not.toContain("\uFFFD");
  });

  it("flushes an incomplete character at the end as the detokenizer would", () => {
    const { chunks, emitted } = run([0, 2, 3]);
    expect(chunks.join("")).toBe(detokenize([0, 2, 3]));
    expect(emitted).toEqual([0, 2, 3]);
  });

  it("never sends a stop string, even split over tokens", () => {
    const { chunks, stop, emitted } = run([0, 11, 12, 1], ["STOP"]);
    expect(chunks.join("")).toBe("Hello");
    expect(stop).toBe("STOP");
    expect(emitted).toEqual([0, 11, 12]);
  });

  it("releases held text that turned out not to be a stop string", () => {
    const { chunks, stop } = run([11, 1], ["STOP"]);
    expect(chunks.join("")).toBe("ST world");
    expect(stop).toBeUndefined();
  });
});
