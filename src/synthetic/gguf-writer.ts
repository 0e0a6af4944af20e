/**
 * A minimal GGUF (v3) writer: enough to write Llama-architecture models that
 * llama.cpp loads. Tensors are written one at a time so a model far larger
 * than a single buffer never has to sit in memory whole.
 */
import { closeSync, openSync, renameSync, writeSync } from "node:fs";

/** GGUF metadata value types (gguf.h). */
export const enum GgufValueType {
  Uint32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
}

/** The ggml tensor types this writer can produce. */
export const enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
}

export type MetadataValue =
  | { type: GgufValueType.Uint32 | GgufValueType.Int32 | GgufValueType.Float32; value: number }
  | { type: GgufValueType.Bool; value: boolean }
  | { type: GgufValueType.String; value: string }
  | {
      type: GgufValueType.Array;
      itemType: GgufValueType.String | GgufValueType.Float32 | GgufValueType.Int32;
      value: readonly (string | number)[];
    };

export interface TensorSpec {
  name: string;
  /** ggml order: the first dimension is the row length. */
  dims: readonly number[];
  type: GgmlType;
  /** Writes the tensor's encoded bytes; called once, in file order. */
  encode(): Uint8Array;
}

const ALIGNMENT = 32;

/** Bytes a tensor of this type and shape takes in the file. */
export function tensorByteSize(type: GgmlType, dims: readonly number[]): number {
  const n = dims.reduce((a, b) => a * b, 1);
  switch (type) {
    case GgmlType.F32:
      return n * 4;
    case GgmlType.F16:
      return n * 2;
    case GgmlType.Q8_0:
      return (n / 32) * 34;
    case GgmlType.Q4_0:
      return (n / 32) * 18;
  }
}

class ByteSink {
  private chunks: Buffer[] = [];
  length = 0;
  push(buf: Buffer): void {
    this.chunks.push(buf);
    this.length += buf.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.push(bytes);
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function writeValue(sink: ByteSink, v: MetadataValue): void {
  sink.u32(v.type);
  switch (v.type) {
    case GgufValueType.Uint32:
      sink.u32(v.value);
      break;
    case GgufValueType.Int32:
      sink.i32(v.value);
      break;
    case GgufValueType.Float32:
      sink.f32(v.value);
      break;
    case GgufValueType.Bool:
      sink.push(Buffer.from([v.value ? 1 : 0]));
      break;
    case GgufValueType.String:
      sink.str(v.value);
      break;
    case GgufValueType.Array:
      sink.u32(v.itemType);
      sink.u64(v.value.length);
      for (const item of v.value) {
        if (v.itemType === GgufValueType.String) sink.str(item as string);
        else if (v.itemType === GgufValueType.Float32) sink.f32(item as number);
        else sink.i32(item as number);
      }
      break;
  }
}

/**
 * Writes a GGUF file at `path`. The file appears under its name only once it
 * is complete (written to `path + ".part"`, then renamed).
 */
export function writeGguf(path: string, metadata: ReadonlyMap<string, MetadataValue>, tensors: readonly TensorSpec[]): void {
  const header = new ByteSink();
  header.push(Buffer.from("GGUF", "ascii"));
  header.u32(3);
  header.u64(tensors.length);
  header.u64(metadata.size);
  for (const [key, value] of metadata) {
    header.str(key);
    writeValue(header, value);
  }
  let offset = 0;
  for (const t of tensors) {
    header.str(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(d);
    header.u32(t.type);
    header.u64(offset);
    offset += align(tensorByteSize(t.type, t.dims));
  }
  const headerBytes = header.concat();
  const tmp = `${path}.part`;
  const fd = openSync(tmp, "w");
  try {
    writeSync(fd, headerBytes);
    writeSync(fd, Buffer.alloc(align(headerBytes.length) - headerBytes.length));
    for (const t of tensors) {
      const data = t.encode();
      const expected = tensorByteSize(t.type, t.dims);
      if (data.length !== expected) {
        throw new Error(`tensor ${t.name}: encoded ${data.length} bytes, expected ${expected}`);
      }
      writeSync(fd, data);
      writeSync(fd, Buffer.alloc(align(data.length) - data.length));
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

function align(n: number): number {
  return Math.ceil(n / ALIGNMENT) * ALIGNMENT;
}
