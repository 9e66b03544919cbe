/**
 * Structure-aware mutations for the fuzz campaign: a surface builds valid
 * inputs from fast-check arbitraries (messages, files, argument lists), then
 * these operators damage them — bit flips, byte changes, truncation,
 * insertion, duplicated or spliced ranges, lies in length fields, and, for
 * sequences, reordering, dropping and repeating whole messages.
 *
 * @module
 */
import fc from 'fast-check';

/** Where a length (or count) field of `size` bytes, big or little endian, sits in a valid input. */
export interface LengthField {
  offset: number;
  size: 1 | 2 | 4 | 8;
  littleEndian?: boolean;
}

/** One mutation; positions are fractions of the input length so they fit any input. */
export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number }
  | { kind: 'duplicate'; at: number; count: number; to: number }
  | { kind: 'splice'; at: number; count: number; to: number }
  | { kind: 'lie'; field: number; value: bigint };

const fraction = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

/** Length-field values worth trying: edges, off-by-one and huge. */
const lieValue = fc.oneof(
  fc.constantFrom(0n, 1n, 2n, 0x7fn, 0xffn, 0x7fffn, 0xffffn, 0x7fffffffn, 0xffffffffn, 0x1_0000_0000n, 0x7fffffffffffffffn, 0xffffffffffffffffn),
  fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
);

/** Arbitrary mutation. */
export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fraction, bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fraction, value: fc.constantFrom(0, 1, 0x7f, 0x80, 0xff, 0xc1, 0xdd, 0xdf) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fraction }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fraction, bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fraction, count: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('duplicate' as const), at: fraction, count: fc.integer({ min: 1, max: 64 }), to: fraction }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('splice' as const), at: fraction, count: fc.integer({ min: 1, max: 64 }), to: fraction }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('lie' as const), field: fc.nat(), value: lieValue }) },
);

/** 0 to `max` mutations (none about one time in four: the valid input itself, to reach the deep states). */
export function mutationsArb(max = 4): fc.Arbitrary<Mutation[]> {
  return fc.oneof({ weight: 1, arbitrary: fc.constant<Mutation[]>([]) }, { weight: 3, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: max }) });
}

function pos(at: number, length: number): number {
  return Math.min(length, Math.floor(at * (length + 1)));
}

function writeField(buf: Buffer, f: LengthField, value: bigint): void {
  if (f.offset + f.size > buf.length) return;
  const v = value & ((1n << BigInt(f.size * 8)) - 1n);
  switch (f.size) {
    case 1:
      buf[f.offset] = Number(v);
      break;
    case 2:
      if (f.littleEndian === true) buf.writeUInt16LE(Number(v), f.offset);
      else buf.writeUInt16BE(Number(v), f.offset);
      break;
    case 4:
      if (f.littleEndian === true) buf.writeUInt32LE(Number(v), f.offset);
      else buf.writeUInt32BE(Number(v), f.offset);
      break;
    case 8:
      if (f.littleEndian === true) buf.writeBigUInt64LE(v, f.offset);
      else buf.writeBigUInt64BE(v, f.offset);
      break;
  }
}

/** Applies `mutations` in order to a copy of `input`. `fields` are its length fields (for `lie`). */
export function applyMutations(input: Uint8Array, mutations: readonly Mutation[], fields: readonly LengthField[] = []): Buffer {
  let buf = Buffer.from(input);
  for (const m of mutations) {
    const n = buf.length;
    switch (m.kind) {
      case 'flip':
        if (n > 0) buf[Math.min(n - 1, pos(m.at, n))]! ^= 1 << m.bit;
        break;
      case 'set':
        if (n > 0) buf[Math.min(n - 1, pos(m.at, n))] = m.value;
        break;
      case 'truncate':
        buf = buf.subarray(0, pos(m.at, n));
        break;
      case 'insert': {
        const p = pos(m.at, n);
        buf = Buffer.concat([buf.subarray(0, p), m.bytes, buf.subarray(p)]);
        break;
      }
      case 'delete': {
        const p = pos(m.at, n);
        buf = Buffer.concat([buf.subarray(0, p), buf.subarray(Math.min(n, p + m.count))]);
        break;
      }
      case 'duplicate': {
        const p = pos(m.at, n);
        const piece = buf.subarray(p, Math.min(n, p + m.count));
        const to = pos(m.to, n);
        buf = Buffer.concat([buf.subarray(0, to), piece, buf.subarray(to)]);
        break;
      }
      case 'splice': {
        // overwrite a range with bytes from elsewhere in the input
        const p = pos(m.at, n);
        const piece = Buffer.from(buf.subarray(p, Math.min(n, p + m.count)));
        const to = pos(m.to, n);
        buf = Buffer.from(buf);
        piece.copy(buf, to, 0, Math.min(piece.length, n - to));
        break;
      }
      case 'lie':
        if (fields.length > 0) {
          buf = Buffer.from(buf);
          writeField(buf, fields[m.field % fields.length]!, m.value);
        }
        break;
    }
  }
  return buf;
}

/** A change to the order of a message sequence. */
export type Reorder = { kind: 'swap'; a: number; b: number } | { kind: 'drop'; at: number } | { kind: 'repeat'; at: number };

/** Arbitrary changes to a sequence's order. */
export const reordersArb: fc.Arbitrary<Reorder[]> = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('swap' as const), a: fc.nat(), b: fc.nat() }),
    fc.record({ kind: fc.constant('drop' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('repeat' as const), at: fc.nat() }),
  ),
  { maxLength: 2 },
);

/** Applies `reorders` to a copy of `items`. */
export function reorder<T>(items: readonly T[], reorders: readonly Reorder[]): T[] {
  const out = [...items];
  for (const r of reorders) {
    if (out.length === 0) break;
    if (r.kind === 'swap') {
      const a = r.a % out.length;
      const b = r.b % out.length;
      [out[a], out[b]] = [out[b]!, out[a]!];
    } else if (r.kind === 'drop') out.splice(r.at % out.length, 1);
    else out.splice(r.at % out.length, 0, out[r.at % out.length]!);
  }
  return out;
}

/** Split points of a byte stream (fractions): the stream is fed in these chunks. */
export const splitsArb: fc.Arbitrary<number[]> = fc.array(fraction, { maxLength: 4 });

/** Cuts `buf` at the given fractions (sorted), into at most `splits.length + 1` chunks. */
export function split(buf: Buffer, splits: readonly number[]): Buffer[] {
  const cuts = [...new Set(splits.map((s) => Math.floor(s * buf.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const c of cuts) {
    if (c > from) out.push(buf.subarray(from, c));
    from = Math.max(from, c);
  }
  if (from < buf.length || out.length === 0) out.push(buf.subarray(from));
  return out;
}
