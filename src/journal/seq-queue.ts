/**
 * A FIFO of journal records ordered by strictly increasing `seq`, with
 * O(1) push/shift and O(log n) lookup by `seq` (binary search). Shared by the
 * journal implementations.
 *
 * @module
 * @internal
 */

/** The fields {@link SeqQueue} needs from a record. */
export interface SeqItem {
  readonly seq: number;
}

/** @internal Array-backed deque sorted by `seq`. */
export class SeqQueue<T extends SeqItem> {
  #items: T[] = [];
  #head = 0;

  /** Number of records. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** The record at position `i` (0 = oldest), or undefined. */
  at(i: number): T | undefined {
    return i >= 0 ? this.#items[this.#head + i] : undefined;
  }

  /** The oldest record, or undefined. */
  first(): T | undefined {
    return this.#items[this.#head];
  }

  /** The newest record, or undefined. */
  last(): T | undefined {
    return this.length > 0 ? this.#items[this.#items.length - 1] : undefined;
  }

  /** Appends a record; its `seq` must be greater than the newest one's. */
  push(item: T): void {
    this.#items.push(item);
  }

  /** Removes and returns the oldest record. */
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined as unknown as T;
    this.#head++;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Removes the records at positions `i` and later (newest end). */
  truncate(i: number): void {
    this.#items.length = this.#head + Math.max(0, Math.min(i, this.length));
  }

  /** Position of the first record whose seq is greater than `seq` (`length` if none). */
  indexAfter(seq: number): number {
    let lo = this.#head;
    let hi = this.#items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#items[mid] as T).seq <= seq) lo = mid + 1;
      else hi = mid;
    }
    return lo - this.#head;
  }

  /** The record with exactly this seq, or undefined. */
  find(seq: number): T | undefined {
    const i = this.indexAfter(seq - 1);
    const item = this.at(i);
    return item !== undefined && item.seq === seq ? item : undefined;
  }
}
