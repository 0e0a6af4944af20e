/**
 * Synthetic Airavata-like models: the Llama architecture, a SentencePiece
 * vocabulary with byte fallback and Devanagari, Airavata's chat template, and
 * deterministic weights. The weights make the model follow fixed scripts: the
 * next token depends on the last one through the embeddings and the output
 * matrix, while every layer still does its full (small-valued) computation. So
 * generation is real llama.cpp work whose greedy output tests can predict.
 */
import { GgmlType, GgufValueType, type MetadataValue, type TensorSpec, writeGguf } from "./gguf-writer.js";
import { prng } from "../util/prng.js";
import { encodeF16, encodeF32, encodeQ4_0, encodeQ8_0 } from "./encode.js";
import { buildVocabulary, BOS_ID, EOS_ID, SPACE, UNK_ID, type Vocabulary } from "./vocabulary.js";

export type WeightType = "f32" | "f16" | "q8_0" | "q4_0";

export interface ModelShape {
  vocabSize: number;
  embeddingLength: number;
  blockCount: number;
  feedForwardLength: number;
  headCount: number;
  headCountKv: number;
  contextLength: number;
}

/** Shapes the project uses: a tiny one for tests; ~160M, ~1B and Airavata's 7B for measurements. */
export const SHAPES = {
  tiny: {
    vocabSize: 1024,
    embeddingLength: 128,
    blockCount: 2,
    feedForwardLength: 256,
    headCount: 4,
    headCountKv: 4,
    contextLength: 4096,
  },
  small: {
    vocabSize: 48064,
    embeddingLength: 768,
    blockCount: 12,
    feedForwardLength: 2048,
    headCount: 12,
    headCountKv: 12,
    contextLength: 4096,
  },
  /** About a billion parameters: decode time a token nearer a real 7B model's, for the bench. */
  medium: {
    vocabSize: 48064,
    embeddingLength: 2048,
    blockCount: 16,
    feedForwardLength: 5504,
    headCount: 16,
    headCountKv: 16,
    contextLength: 4096,
  },
  /** Airavata's own shape (Llama-2 7B with its 48,064-token vocabulary): 6.87B parameters, 3.97 GB at Q4_0. */
  large: {
    vocabSize: 48064,
    embeddingLength: 4096,
    blockCount: 32,
    feedForwardLength: 11008,
    headCount: 32,
    headCountKv: 32,
    contextLength: 4096,
  },
} satisfies Record<string, ModelShape>;

export type ShapeName = keyof typeof SHAPES;

/** Airavata's chat format as a Jinja template, for tools that read it from the file. */
export const CHAT_TEMPLATE =
  "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}" +
  "{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/**
 * The scripts, as pieces. Each piece appears once across all scripts, so its
 * successor is unique. The chat script starts at the newline that ends every
 * chat prompt and loops; ॐ inside it arrives as three byte tokens. Its answer
 * begins with no space after that newline, as a model tuned on Airavata's
 * format does: the answer a client sends back then tokenizes into the tokens
 * generated, which is what lets the prefix cache cover it. The raw
 * script starts at "▁The" and ends the generation after 🙏 (four byte tokens).
 */
export const CHAT_SCRIPT = [
  "<0x0A>",
  "नमस्ते",
  "!",
  "▁मैं",
  "▁एक",
  "▁छोटा",
  "▁परीक्षण",
  "▁मॉडल",
  "▁हूँ",
  "।",
  "▁I",
  "▁am",
  "▁a",
  "▁small",
  "▁test",
  "▁model",
  "▁for",
  "▁airavata",
  "-",
  "serve",
  ".",
  "▁",
  "<0xE0>",
  "<0xA5>",
  "<0x90>",
  "▁शांति",
  ",",
  "▁भारत",
  "▁की",
  "▁राजधानी",
  "▁नई",
  "▁दिल्ली",
  "▁है",
  "<0x0A>",
].map((p) => p.replaceAll("▁", SPACE));
export const RAW_SCRIPT = ["▁The", "▁end", "▁of", "▁story", "<0xF0>", "<0x9F>", "<0x99>", "<0x8F>", "</s>"].map((p) =>
  p.replaceAll("▁", SPACE),
);

const FILE_TYPE: Record<WeightType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 };

function uniform(n: number, scale: number, rand: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * scale;
  return out;
}

function transitions(vocab: Vocabulary): Map<number, number> {
  const next = new Map<number, number>();
  for (const script of [CHAT_SCRIPT, RAW_SCRIPT]) {
    for (let i = 0; i + 1 < script.length; i++) {
      const from = vocab.id(script[i]!);
      const to = vocab.id(script[i + 1]!);
      const existing = next.get(from);
      if (existing !== undefined && existing !== to) throw new Error(`piece ${script[i]} has two successors`);
      next.set(from, to);
    }
  }
  return next;
}

export interface WriteModelOptions {
  path: string;
  shape: ModelShape;
  type: WeightType;
  name?: string;
  seed?: number;
  /**
   * Layer weights tiled from one encoded block of random values instead of
   * drawn and encoded tensor by tensor: a 7B-shaped file in seconds rather than
   * minutes (the GPU run writes one on a clock). Embeddings and the output
   * matrix are written as usual, so the scripted answers and the token
   * dynamics stay; the layers' outputs are small either way.
   */
  fast?: boolean;
}

/** Values in the tiled pattern of a fast write: a whole number of quantization blocks (32). */
const TILE_VALUES = 1 << 20;

/** Writes one synthetic model; returns its parameter count. */
export function writeSyntheticModel(options: WriteModelOptions): { parameters: number } {
  const { shape, type } = options;
  const seed = options.seed ?? 1;
  const vocab = buildVocabulary(shape.vocabSize);
  const nVocab = vocab.tokens.length;
  const d = shape.embeddingLength;
  const headDim = d / shape.headCount;
  const dKv = headDim * shape.headCountKv;
  const ff = shape.feedForwardLength;
  const next = transitions(vocab);

  // Embeddings are ±1 sign vectors; the output matrix maps each scripted token's
  // sign vector to a large logit for its successor, over small random logits.
  const rand = prng(seed);
  const embeddings = new Float32Array(nVocab * d);
  for (let i = 0; i < embeddings.length; i++) embeddings[i] = rand() < 0.5 ? -1 : 1;
  const scriptLogit = 12;
  const layerScale = 0.004;

  const matrix = (rows: number, cols: number, scale: number, tensorSeed: number) => () =>
    uniform(rows * cols, scale, prng(seed * 7919 + tensorSeed));
  const output = () => {
    const w = uniform(nVocab * d, Math.sqrt(3 / d), prng(seed * 7919 + 1));
    for (const [from, to] of next) {
      for (let k = 0; k < d; k++) w[to * d + k]! += (scriptLogit / d) * embeddings[from * d + k]!;
    }
    return w;
  };
  const ones = (n: number) => () => new Float32Array(n).fill(1);

  const matrixType: GgmlType =
    type === "f32" ? GgmlType.F32 : type === "f16" ? GgmlType.F16 : type === "q8_0" ? GgmlType.Q8_0 : GgmlType.Q4_0;
  const outputType = type === "q4_0" ? GgmlType.Q8_0 : matrixType;
  const encode = (t: GgmlType, values: Float32Array): Uint8Array =>
    t === GgmlType.F32
      ? encodeF32(values)
      : t === GgmlType.F16
        ? encodeF16(values)
        : t === GgmlType.Q8_0
          ? encodeQ8_0(values)
          : encodeQ4_0(values);

  const tensors: TensorSpec[] = [];
  let parameters = 0;
  const tiles = new Map<GgmlType, Uint8Array>();
  /** `count` values' worth of the encoded pattern, repeated: whole blocks, since `count` is a multiple of 32. */
  const tiled = (t: GgmlType, count: number): Uint8Array => {
    let tile = tiles.get(t);
    if (!tile) {
      tile = encode(t, uniform(TILE_VALUES, layerScale, prng(seed * 7919 + 7)));
      tiles.set(t, tile);
    }
    const out = new Uint8Array((tile.length / TILE_VALUES) * count);
    for (let at = 0; at < out.length; at += tile.length) out.set(tile.subarray(0, Math.min(tile.length, out.length - at)), at);
    return out;
  };
  const add = (name: string, dims: number[], t: GgmlType, values: () => Float32Array, layer = false) => {
    const count = dims.reduce((a, b) => a * b, 1);
    parameters += count;
    const fast = layer && options.fast === true && count % 32 === 0;
    tensors.push({ name, dims, type: t, encode: () => (fast ? tiled(t, count) : encode(t, values())) });
  };
  add("token_embd.weight", [d, nVocab], matrixType, () => embeddings);
  for (let l = 0; l < shape.blockCount; l++) {
    const s = 100 + l * 10;
    add(`blk.${l}.attn_norm.weight`, [d], GgmlType.F32, ones(d));
    add(`blk.${l}.attn_q.weight`, [d, d], matrixType, matrix(d, d, layerScale, s), true);
    add(`blk.${l}.attn_k.weight`, [d, dKv], matrixType, matrix(dKv, d, layerScale, s + 1), true);
    add(`blk.${l}.attn_v.weight`, [d, dKv], matrixType, matrix(dKv, d, layerScale, s + 2), true);
    add(`blk.${l}.attn_output.weight`, [d, d], matrixType, matrix(d, d, layerScale, s + 3), true);
    add(`blk.${l}.ffn_norm.weight`, [d], GgmlType.F32, ones(d));
    add(`blk.${l}.ffn_gate.weight`, [d, ff], matrixType, matrix(ff, d, layerScale, s + 4), true);
    add(`blk.${l}.ffn_up.weight`, [d, ff], matrixType, matrix(ff, d, layerScale, s + 5), true);
    add(`blk.${l}.ffn_down.weight`, [ff, d], matrixType, matrix(d, ff, layerScale, s + 6), true);
  }
  add("output_norm.weight", [d], GgmlType.F32, ones(d));
  add("output.weight", [d, nVocab], outputType, output);

  const u32 = (value: number): MetadataValue => ({ type: GgufValueType.Uint32, value });
  const str = (value: string): MetadataValue => ({ type: GgufValueType.String, value });
  const metadata = new Map<string, MetadataValue>([
    ["general.architecture", str("llama")],
    ["general.name", str(options.name ?? "airavata-synthetic")],
    ["general.file_type", u32(FILE_TYPE[type])],
    ["general.quantization_version", u32(2)],
    ["llama.context_length", u32(shape.contextLength)],
    ["llama.embedding_length", u32(d)],
    ["llama.block_count", u32(shape.blockCount)],
    ["llama.feed_forward_length", u32(ff)],
    ["llama.rope.dimension_count", u32(headDim)],
    ["llama.attention.head_count", u32(shape.headCount)],
    ["llama.attention.head_count_kv", u32(shape.headCountKv)],
    ["llama.attention.layer_norm_rms_epsilon", { type: GgufValueType.Float32, value: 1e-5 }],
    ["llama.vocab_size", u32(nVocab)],
    ["tokenizer.ggml.model", str("llama")],
    ["tokenizer.ggml.tokens", { type: GgufValueType.Array, itemType: GgufValueType.String, value: vocab.tokens }],
    ["tokenizer.ggml.scores", { type: GgufValueType.Array, itemType: GgufValueType.Float32, value: vocab.scores }],
    ["tokenizer.ggml.token_type", { type: GgufValueType.Array, itemType: GgufValueType.Int32, value: vocab.types }],
    ["tokenizer.ggml.bos_token_id", u32(BOS_ID)],
    ["tokenizer.ggml.eos_token_id", u32(EOS_ID)],
    ["tokenizer.ggml.unknown_token_id", u32(UNK_ID)],
    ["tokenizer.ggml.add_bos_token", { type: GgufValueType.Bool, value: true }],
    ["tokenizer.ggml.add_eos_token", { type: GgufValueType.Bool, value: false }],
    ["tokenizer.chat_template", str(CHAT_TEMPLATE)],
  ]);
  writeGguf(options.path, metadata, tensors);
  return { parameters };
}
