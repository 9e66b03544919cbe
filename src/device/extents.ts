/**
 * Building allocation maps ({@link BlockExtent} lists): extents appended in
 * order, neighbours with the same status merged, and status boundaries that
 * fall inside a block resolved conservatively (a block is "zero" or a "hole"
 * only when every part of it is).
 *
 * @module
 */
import type { BlockExtent } from './block-device.js';

interface MutableExtent {
  offset: number;
  length: number;
  zero: boolean;
  hole: boolean;
}

/**
 * Appends extents that follow each other from `start` and yields
 * block-aligned, merged {@link BlockExtent}s.
 */
export class ExtentBuilder {
  readonly #blockSize: number;
  readonly #out: MutableExtent[] = [];
  #end: number;
  /** A block only partly covered so far, with the AND of the statuses seen in it. */
  #partial: { start: number; zero: boolean; hole: boolean } | undefined;

  /** @param start - offset of the first extent; @param blockSize - alignment of the output. */
  constructor(start: number, blockSize: number) {
    this.#end = start;
    this.#blockSize = blockSize;
  }

  /** End of everything appended so far. */
  get end(): number {
    return this.#end;
  }

  /** End of the complete (block-aligned) output so far: a block still partly covered is not included. */
  get alignedEnd(): number {
    return this.#partial === undefined ? this.#end : this.#partial.start;
  }

  /** Appends `length` bytes with the given status right after the previous extent. */
  push(length: number, zero: boolean, hole: boolean): void {
    const bs = this.#blockSize;
    let pos = this.#end;
    const end = pos + length;
    this.#end = end;
    while (pos < end) {
      const blockStart = pos - (pos % bs);
      const blockEnd = blockStart + bs;
      if (pos === blockStart && this.#partial === undefined && end >= blockEnd) {
        const wholeEnd = end - (end % bs);
        this.#emit(blockStart, wholeEnd - blockStart, zero, hole);
        pos = wholeEnd;
        continue;
      }
      const partEnd = Math.min(end, blockEnd);
      if (this.#partial === undefined) {
        this.#partial = { start: blockStart, zero, hole };
      } else {
        this.#partial.zero &&= zero;
        this.#partial.hole &&= hole;
      }
      if (partEnd === blockEnd) {
        const p = this.#partial;
        this.#partial = undefined;
        this.#emit(p.start, bs, p.zero, p.hole);
      }
      pos = partEnd;
    }
  }

  /** The complete extents, cut to end at `limit` (default: {@link alignedEnd}). */
  extents(limit = this.alignedEnd): BlockExtent[] {
    const out: BlockExtent[] = [];
    for (const e of this.#out) {
      if (e.offset >= limit) break;
      const length = Math.min(e.length, limit - e.offset);
      out.push(Object.freeze({ offset: e.offset, length, zero: e.zero, hole: e.hole }));
    }
    return out;
  }

  #emit(offset: number, length: number, zero: boolean, hole: boolean): void {
    const last = this.#out.at(-1);
    if (last !== undefined && last.offset + last.length === offset && last.zero === zero && last.hole === hole) {
      last.length += length;
      return;
    }
    this.#out.push({ offset, length, zero, hole });
  }
}
