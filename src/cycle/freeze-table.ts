/**
 * The freeze table of one layer (SPEC 28): chunk → -1 (unchanged since the
 * freeze, the data is below) or the slot in the layer's data file that holds
 * the chunk; plus, per slot, a bitmap of the granules the layer really holds
 * (SPEC 35). A cycle sends exactly the set granules, not whole chunks.
 *
 * Binary form (what travels in CYCLE_TABLE frames and what a target stages):
 * a sequence of entries, each `chunk u32 BE, slot u32 BE, bitmap` where the
 * bitmap has `bitmapBytes` bytes, bit `g` (byte `g >> 3`, bit `g & 7`) set
 * when granule `g` of the chunk is present. Entries are in ascending chunk
 * order; every entry has at least one bit set; bits past the end of a partial
 * last chunk are zero.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { granulesIn, runLength, type CycleGeometry } from './geometry.js';

/** A run of consecutive present granules inside one chunk. */
export interface GranuleRun {
  chunk: number;
  slot: number;
  /** First granule (index inside the chunk). */
  granule: number;
  /** Number of granules. */
  count: number;
  /** Byte offset in the volume. */
  offset: number;
  /** Byte length (clipped at the end of the volume). */
  length: number;
}

const ENTRY_HEAD = 8;

function corrupt(message: string, details: Record<string, unknown> = {}): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_BAD_HEADER', `invalid freeze table: ${message}`, { details });
}

/** Chunk → slot map with a granule bitmap per slot. */
export class FreezeTable {
  readonly geometry: CycleGeometry;
  readonly #slotOf: Int32Array;
  /** slot → chunk (-1 for a slot that was skipped). */
  readonly #chunkOf: number[] = [];
  /** slot → granule bitmap. */
  readonly #bits: Uint8Array[] = [];
  #granules = 0;

  constructor(geometry: CycleGeometry) {
    this.geometry = geometry;
    this.#slotOf = new Int32Array(geometry.chunkCount).fill(-1);
  }

  /** Bytes of one binary entry. */
  get entryBytes(): number {
    return ENTRY_HEAD + this.geometry.bitmapBytes;
  }

  /** Slots in use (highest slot + 1). */
  get slotCount(): number {
    return this.#chunkOf.length;
  }

  /** Chunks holding at least one granule. */
  get chunkCount(): number {
    let n = 0;
    for (const c of this.#chunkOf) if (c >= 0) n++;
    return n;
  }

  /** Granules present. */
  get granules(): number {
    return this.#granules;
  }

  /** Bytes present (granules, clipped at the end of the volume). */
  get bytes(): number {
    let total = 0;
    for (const run of this.runs()) total += run.length;
    return total;
  }

  /** Slot of `chunk`, or -1. */
  slotOf(chunk: number): number {
    return this.#slotOf[chunk] ?? -1;
  }

  /** Chunk held by `slot`, or -1. */
  chunkOf(slot: number): number {
    return this.#chunkOf[slot] ?? -1;
  }

  /** Slot of `chunk`, allocating the next free one on first use. */
  allocate(chunk: number): number {
    const s = this.#slotOf[chunk]!;
    if (s >= 0) return s;
    return this.assign(chunk, this.#chunkOf.length);
  }

  /**
   * Puts `chunk` at `slot` (recovery and decoding).
   *
   * @throws {BlockMirrorError} `BM_ERR_BAD_HEADER` when the chunk already has another slot or the slot another chunk.
   */
  assign(chunk: number, slot: number): number {
    if (!Number.isInteger(chunk) || chunk < 0 || chunk >= this.geometry.chunkCount) throw corrupt('chunk out of range', { chunk });
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.geometry.chunkCount) throw corrupt('slot out of range', { slot });
    const current = this.#slotOf[chunk]!;
    if (current === slot) return slot;
    if (current >= 0) throw corrupt('chunk mapped to two slots', { chunk, slot, current });
    if ((this.#chunkOf[slot] ?? -1) >= 0) throw corrupt('slot holds two chunks', { chunk, slot });
    while (this.#chunkOf.length <= slot) {
      this.#chunkOf.push(-1);
      this.#bits.push(new Uint8Array(0));
    }
    this.#chunkOf[slot] = chunk;
    this.#bits[slot] = new Uint8Array(this.geometry.bitmapBytes);
    this.#slotOf[chunk] = slot;
    return slot;
  }

  /** True when granule `granule` of `chunk` is present. */
  has(chunk: number, granule: number): boolean {
    const s = this.#slotOf[chunk]!;
    if (s < 0) return false;
    return ((this.#bits[s]![granule >> 3]! >> (granule & 7)) & 1) === 1;
  }

  /** True when granules `[granule, granule + count)` of `chunk` are all present. */
  hasAll(chunk: number, granule: number, count: number): boolean {
    const s = this.#slotOf[chunk]!;
    if (s < 0) return false;
    const bits = this.#bits[s]!;
    for (let g = granule; g < granule + count; g++) if (((bits[g >> 3]! >> (g & 7)) & 1) === 0) return false;
    return true;
  }

  /**
   * Marks granules `[granule, granule + count)` of `chunk` present (the chunk
   * must have a slot). Returns how many were newly set.
   */
  mark(chunk: number, granule: number, count: number): number {
    const s = this.#slotOf[chunk]!;
    if (s < 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `chunk ${chunk} has no slot`);
    const limit = granulesIn(this.geometry, chunk);
    if (granule < 0 || count < 0 || granule + count > limit) throw corrupt('granule out of range', { chunk, granule, count });
    const bits = this.#bits[s]!;
    let added = 0;
    for (let g = granule; g < granule + count; g++) {
      const m = 1 << (g & 7);
      if ((bits[g >> 3]! & m) === 0) {
        bits[g >> 3]! |= m;
        added++;
      }
    }
    this.#granules += added;
    return added;
  }

  /**
   * Runs of present granules, by ascending chunk, each at most `maxGranules`
   * long (never crossing a chunk).
   */
  *runs(maxGranules = Number.MAX_SAFE_INTEGER): Generator<GranuleRun> {
    const g = this.geometry;
    for (let chunk = 0; chunk < g.chunkCount; chunk++) {
      const slot = this.#slotOf[chunk]!;
      if (slot < 0) continue;
      yield* this.chunkRuns(chunk, maxGranules);
    }
  }

  /** Runs of present granules of one chunk. */
  *chunkRuns(chunk: number, maxGranules = Number.MAX_SAFE_INTEGER): Generator<GranuleRun> {
    const g = this.geometry;
    const slot = this.#slotOf[chunk]!;
    if (slot < 0) return;
    const bits = this.#bits[slot]!;
    const limit = granulesIn(g, chunk);
    let i = 0;
    while (i < limit) {
      if (bits[i >> 3] === 0 && (i & 7) === 0) {
        i += 8;
        continue;
      }
      if (((bits[i >> 3]! >> (i & 7)) & 1) === 0) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < limit && j - i < maxGranules && ((bits[j >> 3]! >> (j & 7)) & 1) === 1) j++;
      yield { chunk, slot, granule: i, count: j - i, offset: chunk * g.chunkSize + i * g.granularity, length: runLength(g, chunk, i, j - i) };
      i = j;
    }
  }

  /** A copy of this table. */
  clone(): FreezeTable {
    const t = new FreezeTable(this.geometry);
    this.#chunkOf.forEach((chunk, slot) => {
      if (chunk < 0) return;
      t.assign(chunk, slot);
      t.#bits[slot]!.set(this.#bits[slot]!);
    });
    t.#granules = this.#granules;
    return t;
  }

  /** Binary form (see the module notes). */
  encode(): Buffer {
    const entry = this.entryBytes;
    const chunks: number[] = [];
    for (let c = 0; c < this.geometry.chunkCount; c++) {
      const s = this.#slotOf[c]!;
      if (s >= 0 && this.#bits[s]!.some((b) => b !== 0)) chunks.push(c);
    }
    const out = Buffer.alloc(chunks.length * entry);
    chunks.forEach((c, i) => {
      const s = this.#slotOf[c]!;
      out.writeUInt32BE(c, i * entry);
      out.writeUInt32BE(s, i * entry + 4);
      out.set(this.#bits[s]!, i * entry + ENTRY_HEAD);
    });
    return out;
  }

  /**
   * Parses a binary table for `geometry`.
   *
   * @throws {BlockMirrorError} `BM_ERR_BAD_HEADER` for a malformed table (length,
   *   order, duplicate chunks or slots, empty entries, bits past the end of the volume).
   */
  static decode(geometry: CycleGeometry, bytes: Uint8Array): FreezeTable {
    const t = new FreezeTable(geometry);
    const entry = t.entryBytes;
    if (bytes.length % entry !== 0) throw corrupt('length is not a multiple of the entry size', { length: bytes.length, entry });
    const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let previous = -1;
    for (let at = 0; at < view.length; at += entry) {
      const chunk = view.readUInt32BE(at);
      const slot = view.readUInt32BE(at + 4);
      if (chunk <= previous) throw corrupt('entries not in ascending chunk order', { chunk });
      previous = chunk;
      t.assign(chunk, slot);
      const bits = view.subarray(at + ENTRY_HEAD, at + entry);
      const limit = granulesIn(geometry, chunk);
      let count = 0;
      for (let g = 0; g < geometry.granulesPerChunk; g++) {
        if (((bits[g >> 3]! >> (g & 7)) & 1) === 0) continue;
        if (g >= limit) throw corrupt('granule past the end of the volume', { chunk, granule: g });
        count++;
      }
      if ((geometry.granulesPerChunk & 7) !== 0 && bits.length > 0 && (bits[bits.length - 1]! >> (geometry.granulesPerChunk & 7)) !== 0) {
        throw corrupt('padding bits set', { chunk });
      }
      if (count === 0) throw corrupt('empty entry', { chunk });
      t.#bits[slot]!.set(bits);
      t.#granules += count;
    }
    return t;
  }

  /** A table holding every granule of the volume, slot = chunk (a full copy). */
  static full(geometry: CycleGeometry): FreezeTable {
    const t = new FreezeTable(geometry);
    for (let c = 0; c < geometry.chunkCount; c++) {
      t.assign(c, c);
      t.mark(c, 0, granulesIn(geometry, c));
    }
    return t;
  }

  /**
   * The union of several tables of the same geometry (granules present in any
   * of them), with slots numbered afresh by ascending chunk: the delta that
   * brings a target from the freeze below the oldest table to the newest one.
   */
  static union(geometry: CycleGeometry, tables: readonly FreezeTable[]): FreezeTable {
    if (tables.length === 1) return tables[0]!.clone();
    const t = new FreezeTable(geometry);
    for (let c = 0; c < geometry.chunkCount; c++) {
      let merged: Uint8Array | undefined;
      for (const src of tables) {
        const s = src.#slotOf[c]!;
        if (s < 0) continue;
        const bits = src.#bits[s]!;
        merged ??= new Uint8Array(geometry.bitmapBytes);
        for (let i = 0; i < bits.length; i++) merged[i]! |= bits[i]!;
      }
      if (merged === undefined || !merged.some((b) => b !== 0)) continue;
      const slot = t.assign(c, t.#chunkOf.length);
      t.#bits[slot]!.set(merged);
      for (const byte of merged) t.#granules += popcount8(byte);
    }
    return t;
  }
}

function popcount8(b: number): number {
  b = b - ((b >> 1) & 0x55);
  b = (b & 0x33) + ((b >> 2) & 0x33);
  return (b + (b >> 4)) & 0x0f;
}
