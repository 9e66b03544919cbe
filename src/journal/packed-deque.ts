/**
 * A FIFO of fixed-width numeric rows packed in one `Float64Array` ring: O(1)
 * push at the newest end and shift at the oldest, O(log n) search on the
 * first column (kept ascending by the caller). The compact in-memory form of
 * per-record bookkeeping (the file journal's record index, the primary's
 * journal-only backlog): a row costs `8 × stride` bytes, no object per row.
 *
 * Every value must be exactly representable as a float64 (safe integers are).
 *
 * @module
 * @internal
 */

const MIN_ROWS = 16;

/** @internal Ring of rows of `stride` float64 values. */
export class PackedDeque {
  readonly #stride: number;
  #data: Float64Array;
  /** Capacity in rows (a power of two). */
  #rows: number;
  #head = 0;
  #length = 0;

  constructor(stride: number) {
    this.#stride = stride;
    this.#rows = MIN_ROWS;
    this.#data = new Float64Array(MIN_ROWS * stride);
  }

  /** Number of rows. */
  get length(): number {
    return this.#length;
  }

  /** Bytes of the backing store (diagnostics). */
  get byteLength(): number {
    return this.#data.byteLength;
  }

  /** Value of column `col` of row `i` (0 = oldest); `i` must be in range. */
  get(i: number, col: number): number {
    return this.#data[((this.#head + i) & (this.#rows - 1)) * this.#stride + col] as number;
  }

  /** Sets column `col` of row `i`. */
  set(i: number, col: number, value: number): void {
    this.#data[((this.#head + i) & (this.#rows - 1)) * this.#stride + col] = value;
  }

  /** Appends a row (all columns 0) and returns its index; fill it with {@link set}. */
  push(): number {
    if (this.#length === this.#rows) this.#resize(this.#rows * 2);
    const i = this.#length++;
    this.#data.fill(0, this.#physical(i), this.#physical(i) + this.#stride);
    return i;
  }

  /** Removes the oldest row. */
  shift(): void {
    if (this.#length === 0) return;
    this.#head = (this.#head + 1) & (this.#rows - 1);
    this.#length--;
    if (this.#length === 0) this.#head = 0;
    this.#maybeShrink();
  }

  /** Keeps the `n` oldest rows. */
  truncate(n: number): void {
    this.#length = Math.max(0, Math.min(n, this.#length));
    if (this.#length === 0) this.#head = 0;
    this.#maybeShrink();
  }

  /** Index of the first row whose column 0 is greater than `key` (`length` if none). */
  indexAfter(key: number): number {
    let lo = 0;
    let hi = this.#length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.get(mid, 0) <= key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Index of the row whose column 0 equals `key`, or -1. */
  find(key: number): number {
    const i = this.indexAfter(key - 1);
    return i < this.#length && this.get(i, 0) === key ? i : -1;
  }

  #physical(i: number): number {
    return ((this.#head + i) & (this.#rows - 1)) * this.#stride;
  }

  /** Shrinks to half while a quarter or less is used, so that a drained backlog gives its memory back. */
  #maybeShrink(): void {
    if (this.#rows <= MIN_ROWS || this.#length * 4 > this.#rows) return;
    let rows = this.#rows / 2;
    while (rows > MIN_ROWS && this.#length * 4 <= rows) rows /= 2;
    this.#resize(rows);
  }

  #resize(rows: number): void {
    const stride = this.#stride;
    const next = new Float64Array(rows * stride);
    const first = Math.min(this.#length, this.#rows - this.#head);
    next.set(this.#data.subarray(this.#head * stride, (this.#head + first) * stride), 0);
    if (first < this.#length) next.set(this.#data.subarray(0, (this.#length - first) * stride), first * stride);
    this.#data = next;
    this.#rows = rows;
    this.#head = 0;
  }
}
