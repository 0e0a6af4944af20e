/**
 * The synthetic models' SentencePiece ("llama") vocabulary: control tokens,
 * the 256 byte-fallback tokens, single characters (ASCII and Devanagari, except
 * ॐ, which always falls back to bytes), whole words with every prefix (so the
 * tokenizer's pair merges can reach them) and filler syllables up to the size
 * asked for.
 */

/** llama.cpp token types. */
export const enum TokenType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  Byte = 6,
}

export const SPACE = "\u2581";
export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;

export interface Vocabulary {
  tokens: string[];
  scores: number[];
  types: TokenType[];
  /** Id of a piece; throws for a piece that is not in the vocabulary. */
  id(piece: string): number;
}

/** Words (and their prefixes) the tokenizer keeps whole. */
export const WORDS = [
  "नमस्ते",
  "मैं",
  "एक",
  "छोटा",
  "परीक्षण",
  "मॉडल",
  "हूँ",
  "शांति",
  "भारत",
  "की",
  "राजधानी",
  "नई",
  "दिल्ली",
  "है",
  "क्या",
  "हिंदी",
  "में",
  "और",
  "आप",
  "कैसे",
  "हैं",
  "I",
  "am",
  "a",
  "small",
  "test",
  "model",
  "for",
  "airavata",
  "serve",
  "The",
  "end",
  "of",
  "story",
  "hello",
  "world",
  "what",
  "is",
  "the",
  "capital",
  "India",
  "user",
  "assistant",
  "system",
];

const ONE_BYTE_CHARS = Array.from({ length: 0x7f - 0x21 }, (_, i) => String.fromCharCode(0x21 + i));
/** Devanagari block, except ॐ (U+0950). */
const DEVANAGARI = Array.from({ length: 0x80 }, (_, i) => String.fromCharCode(0x900 + i)).filter((c) => c !== "\u0950");
const CONSONANTS = Array.from("कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह");
const SIGNS = ["", ..."ािीुूेैोौंः"];

export function buildVocabulary(minSize: number): Vocabulary {
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: TokenType[] = [];
  const index = new Map<string, number>();
  const add = (piece: string, type: TokenType, score: number): void => {
    if (index.has(piece)) return;
    index.set(piece, tokens.length);
    tokens.push(piece);
    scores.push(score);
    types.push(type);
  };
  add("<unk>", TokenType.Unknown, 0);
  add("<s>", TokenType.Control, 0);
  add("</s>", TokenType.Control, 0);
  for (let b = 0; b < 256; b++) {
    add(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, TokenType.Byte, 0);
  }
  // Longer pieces score higher, so merges prefer them, as in a trained model.
  add(SPACE, TokenType.Normal, -1000);
  for (const c of [...ONE_BYTE_CHARS, ...DEVANAGARI]) add(c, TokenType.Normal, -1000);
  for (const word of WORDS) {
    const chars = Array.from(word);
    for (let n = 1; n <= chars.length; n++) {
      const prefix = chars.slice(0, n).join("");
      add(SPACE + prefix, TokenType.Normal, -100 + n);
      if (n > 1) add(prefix, TokenType.Normal, -200 + n);
    }
  }
  outer: for (const first of CONSONANTS) {
    for (const sign of SIGNS) {
      for (const prefix of ["", SPACE]) {
        if (tokens.length >= minSize) break outer;
        add(prefix + first + sign, TokenType.Normal, -500);
      }
    }
  }
  // Filler beyond single syllables: two-syllable pieces, never reached by merges.
  outer2: for (const a of CONSONANTS) {
    for (const sa of SIGNS) {
      for (const b of CONSONANTS) {
        for (const sb of SIGNS) {
          if (tokens.length >= minSize) break outer2;
          add(SPACE + a + sa + b + sb, TokenType.Normal, -900);
        }
      }
    }
  }
  let n = 0;
  while (tokens.length < minSize) add(`<unused${n++}>`, TokenType.Normal, -10000);
  return {
    tokens,
    scores,
    types,
    id(piece) {
      const found = index.get(piece);
      if (found === undefined) throw new Error(`piece ${JSON.stringify(piece)} is not in the vocabulary`);
      return found;
    },
  };
}
