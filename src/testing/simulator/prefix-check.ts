/**
 * What a mirror image may hold of a primary's write history (invariant I4):
 * {@link consistentCut} (async volumes: a set of writes closed under
 * happens-before) and {@link prefixPoint} (a strict prefix in seq order, for
 * histories that are totally ordered).
 *
 * @module
 */

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
  return prefixPointOver(denseBlocks(base, image, blockSize), history, blockSize, fromSeq);
}

/**
 * {@link prefixPoint} for sparse images (block index → content; a missing
 * block is zeroes), e.g. volumes of many GiB: only the blocks non-zero in
 * either image or written with data by the history are looked at (every
 * other block is zero before, after and in every zeroing).
 */
export function prefixPointSparse(base: ReadonlyMap<number, Buffer>, image: ReadonlyMap<number, Buffer>, history: readonly HistoryWrite[], blockSize: number, fromSeq = 0): PrefixResult {
  return prefixPointOver(sparseBlocks(base, image, history.filter((w) => w.seq > fromSeq), blockSize), history, blockSize, fromSeq);
}

function prefixPointOver(blocks: BlockView, history: readonly HistoryWrite[], blockSize: number, fromSeq: number): PrefixResult {
  const { baseAt, imageAt } = blocks;
  const writes = [...history].filter((w) => w.seq > fromSeq).sort((a, b) => a.seq - b.seq);
  const perBlock = new Map<number, HistoryWrite[]>();
  for (const w of writes) forEachBlock(w, blocks, blockSize, (b) => addTo(perBlock, b, w));
  let allowed: Interval[] = [[fromSeq, Number.POSITIVE_INFINITY]];
  for (const b of blocks.list) {
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


/**
 * One write (or zeroing, `data` undefined) of a replication history, with
 * what the caller saw of it: when it was issued and when it completed, on one
 * logical clock (a counter the observer increments at every issue and every
 * completion it sees).
 */
export interface ObservedWrite {
  /** The primary's order among overlapping writes (its sequence number; parts of one operation may share it). */
  seq: number;
  offset: number;
  length: number;
  data: Buffer | undefined;
  /** Logical time the caller issued the operation. */
  issued: number;
  /** Logical time the caller saw it complete. */
  completed: number;
  /** Operation it is a part of, and its index there: parts of one operation are ordered by `part`. */
  op?: number;
  part?: number;
}

/** Result of {@link consistentCut}. */
export interface CutResult {
  /** True when a set of writes closed under happens-before explains the image. */
  ok: boolean;
  /** When ok: the smallest such set, as indexes into the history. */
  applied?: number[];
  /** When not ok: a block that no such set explains together with the others. */
  block?: number;
  /** When not ok and known: index of a write that the image's other blocks require (happens-before) but `block` does not show. */
  missing?: number;
}

/**
 * Crash consistency under concurrency (invariant I4 for async volumes): is
 * `image` equal to `base` with a set S of the writes of `history` applied,
 * where S is closed under happens-before? Write a happens before write b when
 *
 * - a completed before b was issued (`a.completed < b.issued`);
 * - they overlap (share a block) and a comes first in the primary's order
 *   (`a.seq < b.seq`, or the same seq and `a.part < b.part`);
 * - they are parts of one operation and a is the earlier part;
 *
 * and transitively. A zeroing of several blocks counts block by block, its
 * blocks unordered among themselves (see `zeroesByBlock`: a long zeroing is
 * not atomic on any device). Overlapping writes of S are applied in the primary's
 * order, so each block shows the last write of S that covers it (or `base`).
 * Writes that were concurrent (neither happens before the other) may be
 * present in any combination: that is what a disk that acknowledged neither
 * yet may show after a crash. A write in S whose happens-before predecessor
 * is missing, or an overlapping write present over a later one, is refused.
 *
 * Per block the writes covering it are totally ordered, so S holds a prefix of
 * them; the check raises each block's prefix only as far as the image and
 * the closure force it, starting from the shortest prefixes the image allows.
 * The fixpoint is the smallest closed set that could explain the image, and
 * it explains it exactly when any closed set does. Partial-block writes never
 * match (their block value is not modelled).
 */
export function consistentCut(base: Buffer, image: Buffer, history: readonly ObservedWrite[], blockSize: number): CutResult {
  return consistentCutOver(denseBlocks(base, image, blockSize), history, blockSize);
}

/**
 * {@link consistentCut} for sparse images (block index → content; a missing
 * block is zeroes), e.g. volumes of many GiB: only the blocks non-zero in
 * either image or written with data by the history are looked at (every
 * other block is zero before, after and in every zeroing).
 */
export function consistentCutSparse(base: ReadonlyMap<number, Buffer>, image: ReadonlyMap<number, Buffer>, history: readonly ObservedWrite[], blockSize: number): CutResult {
  return consistentCutOver(sparseBlocks(base, image, history, blockSize), history, blockSize);
}

function consistentCutOver(blocks: BlockView, observed: readonly ObservedWrite[], blockSize: number): CutResult {
  const { history, origin } = zeroesByBlock(observed, blocks, blockSize);
  const r = consistentCutOf(blocks, history, blockSize);
  return {
    ...r,
    ...(r.applied === undefined ? {} : { applied: [...new Set(r.applied.map((i) => origin[i]!))].sort((a, b) => a - b) }),
    ...(r.missing === undefined ? {} : { missing: origin[r.missing]! }),
  };
}

/**
 * A zeroing of several blocks as one write per block (of the blocks looked
 * at), unordered among themselves: a device zeroes a long range piece by
 * piece (a mirror target in 1 MiB runs or per allocation region, only where
 * data is), so while it runs, or after a crash during it, any of its blocks
 * may show it and the others not — as for the blocks of one write on a disk
 * with a volatile cache. Every other relation stays: the pieces have the
 * zeroing's seq (ordered with overlapping writes) and its issue and
 * completion times (a write issued after it completed needs all of them).
 * `origin` maps each resulting write to its index in `history`.
 */
function zeroesByBlock(history: readonly ObservedWrite[], blocks: BlockView, blockSize: number): { history: ObservedWrite[]; origin: number[] } {
  const out: ObservedWrite[] = [];
  const origin: number[] = [];
  history.forEach((w, i) => {
    if (w.data !== undefined || w.length <= blockSize) {
      out.push(w);
      origin.push(i);
      return;
    }
    const end = w.offset + w.length;
    forEachBlock(w, blocks, blockSize, (b) => {
      const from = Math.max(w.offset, b * blockSize);
      out.push({ seq: w.seq, offset: from, length: Math.min(end, (b + 1) * blockSize) - from, data: undefined, issued: w.issued, completed: w.completed });
      origin.push(i);
    });
  });
  return { history: out, origin };
}

function consistentCutOf(blocks: BlockView, history: readonly ObservedWrite[], blockSize: number): CutResult {
  const { baseAt, imageAt } = blocks;
  const n = history.length;
  // per block: indexes of the writes covering it, in the primary's order
  const perBlock = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    forEachBlock(history[i]!, blocks, blockSize, (b) => {
      let list = perBlock.get(b);
      if (list === undefined) perBlock.set(b, (list = []));
      list.push(i);
    });
  }
  const before = (a: number, b: number): number => history[a]!.seq - history[b]!.seq || (history[a]!.part ?? 0) - (history[b]!.part ?? 0);
  // position (1-based) of each write in the list of each block it covers
  const positions: Array<Array<[block: number, pos: number]>> = Array.from({ length: n }, () => []);
  // per block: for each prefix length m (0…k), whether it gives the image's value
  const allowed = new Map<number, boolean[]>();
  for (const b of blocks.list) {
    const start = b * blockSize;
    const got = imageAt(b);
    const list = perBlock.get(b);
    if (list === undefined) {
      if (!got.equals(baseAt(b))) return { ok: false, block: b };
      continue;
    }
    list.sort(before);
    const ok: boolean[] = [got.equals(baseAt(b))];
    for (let p = 0; p < list.length; p++) {
      positions[list[p]!]!.push([b, p + 1]);
      const value = blockOf(history[list[p]!]!, start, blockSize);
      ok.push(value !== undefined && got.equals(value));
    }
    allowed.set(b, ok);
  }
  // the previous part of each part of an operation
  const previousPart = new Array<number>(n).fill(-1);
  const parts = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const op = history[i]!.op;
    if (op === undefined) continue;
    let list = parts.get(op);
    if (list === undefined) parts.set(op, (list = []));
    list.push(i);
  }
  for (const list of parts.values()) {
    list.sort((a, b) => (history[a]!.part ?? 0) - (history[b]!.part ?? 0));
    for (let k = 1; k < list.length; k++) previousPart[list[k]!] = list[k - 1]!;
  }
  const byCompletion = [...history.keys()].sort((a, b) => history[a]!.completed - history[b]!.completed);

  const inSet = new Array<boolean>(n).fill(false);
  const work: number[] = [];
  const add = (i: number): void => {
    if (inSet[i]) return;
    inSet[i] = true;
    work.push(i);
  };
  // prefix length per block: the shortest the image allows, raised when the closure demands
  const prefix = new Map<number, number>();
  /** Raises block `b`'s prefix to the shortest length ≥ `pos` the image allows (false if none), adding the writes it takes in. */
  const raise = (b: number, pos: number): boolean => {
    const from = prefix.get(b);
    if (from !== undefined && pos <= from) return true;
    const ok = allowed.get(b)!;
    let m = pos;
    while (m < ok.length && !ok[m]) m++;
    if (m >= ok.length) return false;
    prefix.set(b, m);
    const list = perBlock.get(b)!;
    for (let p = from ?? 0; p < m; p++) add(list[p]!);
    return true;
  };
  for (const b of allowed.keys()) if (!raise(b, 0)) return { ok: false, block: b };
  let latestIssue = Number.NEGATIVE_INFINITY;
  let completedUpTo = 0;
  while (work.length > 0) {
    const i = work.pop()!;
    const w = history[i]!;
    if (w.issued > latestIssue) {
      latestIssue = w.issued;
      // every write that completed before this one was issued
      while (completedUpTo < n && history[byCompletion[completedUpTo]!]!.completed < latestIssue) add(byCompletion[completedUpTo++]!);
    }
    if (previousPart[i]! >= 0) add(previousPart[i]!);
    for (const [b, pos] of positions[i]!) {
      if (!raise(b, pos)) return { ok: false, block: b, missing: i };
    }
  }
  const applied: number[] = [];
  for (let i = 0; i < n; i++) if (inSet[i]) applied.push(i);
  return { ok: true, applied };
}

/** The blocks a check looks at, and their content in the base and the image. */
interface BlockView {
  /** Block indexes, ascending. */
  list: readonly number[];
  /** For a sparse view: the same blocks as a set (every other block is left out). */
  wanted: ReadonlySet<number> | undefined;
  baseAt(block: number): Buffer;
  imageAt(block: number): Buffer;
}

/** Every block of two whole images. */
function denseBlocks(base: Buffer, image: Buffer, blockSize: number): BlockView {
  const at = (buf: Buffer) => (b: number) => buf.subarray(b * blockSize, (b + 1) * blockSize);
  return { list: Array.from({ length: image.length / blockSize }, (_, i) => i), wanted: undefined, baseAt: at(base), imageAt: at(image) };
}

/**
 * Sparse images (block index → content; a missing block is zeroes): only the
 * blocks that are non-zero in either image or written with data by `history`
 * are looked at. Every other block is zero before, after and in every
 * zeroing, so it constrains nothing.
 */
function sparseBlocks(base: ReadonlyMap<number, Buffer>, image: ReadonlyMap<number, Buffer>, history: readonly HistoryWrite[], blockSize: number): BlockView {
  const set = new Set<number>([...base.keys(), ...image.keys()]);
  for (const w of history) {
    if (w.data === undefined || w.length <= 0) continue;
    for (let b = Math.floor(w.offset / blockSize); b <= Math.floor((w.offset + w.length - 1) / blockSize); b++) set.add(b);
  }
  const zero = Buffer.alloc(blockSize);
  const at = (m: ReadonlyMap<number, Buffer>) => (b: number) => m.get(b) ?? zero;
  return { list: [...set].sort((x, y) => x - y), wanted: set, baseAt: at(base), imageAt: at(image) };
}

/** Calls `fn` for each block of `blocks` that `w` covers (a long zeroing of a sparse view: only the blocks looked at). */
function forEachBlock(w: HistoryWrite, blocks: BlockView, blockSize: number, fn: (block: number) => void): void {
  if (w.length <= 0) return;
  const first = Math.floor(w.offset / blockSize);
  const last = Math.floor((w.offset + w.length - 1) / blockSize);
  const wanted = blocks.wanted;
  if (wanted !== undefined && last - first + 1 > wanted.size) {
    for (const b of wanted) if (b >= first && b <= last) fn(b);
    return;
  }
  for (let b = first; b <= last; b++) if (wanted === undefined || wanted.has(b)) fn(b);
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
