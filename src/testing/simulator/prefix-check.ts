/**
 * Prefix consistency (invariant I4): is an image equal to a base image with
 * the first k writes of a history applied, for some k?
 *
 * @module
 */

/** One write (or zeroing, `data` undefined) of a replication history. */
export interface HistoryWrite {
  seq: number;
  offset: number;
  length: number;
  data: Buffer | undefined;
}

/** Result of {@link prefixPoint}. */
export interface PrefixResult {
  /** True when some prefix of the history explains the image. */
  ok: boolean;
  /** The smallest seq k such that base + writes with seq ≤ k equals the image (when ok). */
  seq?: number;
  /** When not ok: a block whose content no prefix explains together with the others. */
  block?: number;
}

type Interval = [number, number]; // [from, to) over seq values

function intersect(a: Interval[], b: Interval[]): Interval[] {
  const out: Interval[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const from = Math.max(a[i]![0], b[j]![0]);
    const to = Math.min(a[i]![1], b[j]![1]);
    if (from < to) out.push([from, to]);
    if (a[i]![1] < b[j]![1]) i++;
    else j++;
  }
  return out;
}

/**
 * Finds a k ≥ `fromSeq` such that `image` equals `base` with every write of
 * `history` whose seq is in (`fromSeq`, k] applied in seq order. Works block
 * by block: each block admits the seq intervals in which its value equals
 * the image's; the answer is the intersection over all blocks.
 */
export function prefixPoint(base: Buffer, image: Buffer, history: readonly HistoryWrite[], blockSize: number, fromSeq = 0): PrefixResult {
  const blocks = Array.from({ length: image.length / blockSize }, (_, i) => i);
  const at = (buf: Buffer) => (b: number) => buf.subarray(b * blockSize, (b + 1) * blockSize);
  return prefixPointOver(blocks, at(base), at(image), history, blockSize, fromSeq, false);
}

/**
 * {@link prefixPoint} for sparse images (block index → content; a missing
 * block is zeroes), e.g. volumes of many GiB: only the blocks that are
 * non-zero in either image or written with data by the history are looked
 * at (every other block is zero before, after and in every zeroing).
 */
export function prefixPointSparse(base: ReadonlyMap<number, Buffer>, image: ReadonlyMap<number, Buffer>, history: readonly HistoryWrite[], blockSize: number, fromSeq = 0): PrefixResult {
  const set = new Set<number>([...base.keys(), ...image.keys()]);
  for (const w of history) {
    if (w.data === undefined || w.seq <= fromSeq) continue;
    for (let b = Math.floor(w.offset / blockSize); b <= Math.floor((w.offset + w.length - 1) / blockSize); b++) set.add(b);
  }
  const zero = Buffer.alloc(blockSize);
  const at = (m: ReadonlyMap<number, Buffer>) => (b: number) => m.get(b) ?? zero;
  return prefixPointOver([...set].sort((x, y) => x - y), at(base), at(image), history, blockSize, fromSeq, true);
}

function prefixPointOver(
  blocks: readonly number[],
  baseAt: (block: number) => Buffer,
  imageAt: (block: number) => Buffer,
  history: readonly HistoryWrite[],
  blockSize: number,
  fromSeq: number,
  sparse: boolean,
): PrefixResult {
  const wanted = sparse ? new Set(blocks) : undefined;
  const writes = [...history].filter((w) => w.seq > fromSeq).sort((a, b) => a.seq - b.seq);
  const perBlock = new Map<number, HistoryWrite[]>();
  for (const w of writes) {
    const first = Math.floor(w.offset / blockSize);
    const last = Math.floor((w.offset + w.length - 1) / blockSize);
    if (wanted !== undefined && last - first + 1 > wanted.size) {
      // a long zeroing: only the blocks looked at matter
      for (const b of wanted) if (b >= first && b <= last) addTo(perBlock, b, w);
      continue;
    }
    for (let b = first; b <= last; b++) if (wanted === undefined || wanted.has(b)) addTo(perBlock, b, w);
  }
  let allowed: Interval[] = [[fromSeq, Number.POSITIVE_INFINITY]];
  for (const b of blocks) {
    const start = b * blockSize;
    const got = imageAt(b);
    const list = perBlock.get(b);
    if (list === undefined) {
      if (!got.equals(baseAt(b))) return { ok: false, block: b };
      continue;
    }
    const mine: Interval[] = [];
    let from = fromSeq;
    let value: Buffer | undefined = baseAt(b);
    const push = (to: number): void => {
      if (from < to && value !== undefined && got.equals(value)) {
        const last = mine[mine.length - 1];
        if (last !== undefined && last[1] === from) last[1] = to;
        else mine.push([from, to]);
      }
    };
    for (const w of list) {
      push(w.seq);
      from = w.seq;
      value = blockOf(w, start, blockSize);
    }
    push(Number.POSITIVE_INFINITY);
    allowed = intersect(allowed, mine);
    if (allowed.length === 0) return { ok: false, block: b };
  }
  return { ok: true, seq: allowed[0]![0] };
}

function addTo(perBlock: Map<number, HistoryWrite[]>, b: number, w: HistoryWrite): void {
  let list = perBlock.get(b);
  if (list === undefined) perBlock.set(b, (list = []));
  list.push(w);
}

const ZERO_BLOCKS = new Map<number, Buffer>();

function blockOf(w: HistoryWrite, blockStart: number, blockSize: number): Buffer | undefined {
  // a write covering part of the block only: its value depends on what was there (not modelled: never matches)
  if (w.offset > blockStart || w.offset + w.length < blockStart + blockSize) return undefined;
  if (w.data === undefined) {
    let z = ZERO_BLOCKS.get(blockSize);
    if (z === undefined) ZERO_BLOCKS.set(blockSize, (z = Buffer.alloc(blockSize)));
    return z;
  }
  return w.data.subarray(blockStart - w.offset, blockStart - w.offset + blockSize);
}
