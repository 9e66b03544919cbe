/**
 * Buffers for READ replies, used again once a reply has been written.
 *
 * A new buffer per READ costs more than the read itself when the data comes
 * from the page cache: a fresh allocation of a few hundred KiB is mapped,
 * faulted in and later collected (garbage collection took about a quarter of
 * the event loop while `nbdcopy` read a sparse export). The server takes a
 * buffer here for each READ whose backend reads into a caller's buffer
 * (`readInto`) and gives it back when the socket has written the reply.
 *
 * @module
 */

/** Smallest length kept: below it Node's own allocation pool is as cheap. */
export const MIN_POOLED_BYTES = 16 * 1024;
/** Largest length kept (longer reads get a buffer of their own). */
export const MAX_POOLED_BYTES = 4 * 1024 * 1024;
/** Bytes kept idle in the free lists of one server, at most. */
export const DEFAULT_POOL_BYTES = 16 * 1024 * 1024;

/** Free READ buffers by exact length, at most `limit` bytes of them idle. */
export class ReadBuffers {
  readonly #free = new Map<number, Buffer[]>();
  readonly #limit: number;
  #idle = 0;

  constructor(limit = DEFAULT_POOL_BYTES) {
    this.#limit = limit;
  }

  /** Bytes idle in the free lists. */
  get idleBytes(): number {
    return this.#idle;
  }

  /** A buffer of exactly `length` bytes, its content unspecified (the caller overwrites all of it). */
  take(length: number): Buffer {
    const list = this.#free.get(length);
    const buffer = list?.pop();
    if (buffer !== undefined) {
      this.#idle -= length;
      return buffer;
    }
    // not from the shared slab: a pooled buffer must own its whole memory
    return Buffer.allocUnsafeSlow(length);
  }

  /** True when a buffer of `length` bytes is worth taking from (and giving back to) the pool. */
  pooled(length: number): boolean {
    return length >= MIN_POOLED_BYTES && length <= MAX_POOLED_BYTES;
  }

  /** Gives back a buffer from {@link take} that nothing uses any more (dropped when the pool is full). */
  give(buffer: Buffer): void {
    const length = buffer.length;
    if (!this.pooled(length) || this.#idle + length > this.#limit) return;
    let list = this.#free.get(length);
    if (list === undefined) this.#free.set(length, (list = []));
    list.push(buffer);
    this.#idle += length;
  }
}
