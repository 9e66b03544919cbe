/**
 * Serialises overlapping writes of one volume in arrival order, so that the
 * order in which the primary applies them is well defined (and is the order
 * the mirror must follow). Disjoint writes never wait for each other.
 *
 * @module
 */

interface Held {
  start: number;
  end: number;
  released: Promise<void>;
}

/** A FIFO lock over byte ranges. */
export class RangeLock {
  readonly #held = new Set<Held>();

  /** Ranges held or waited for. */
  get size(): number {
    return this.#held.size;
  }

  /**
   * Registers `[offset, offset + length)` at once (so later overlapping
   * requests queue behind it), waits for every earlier overlapping holder,
   * and resolves with the release function.
   */
  async acquire(offset: number, length: number): Promise<() => void> {
    return this.tryAcquire(offset, length);
  }

  /**
   * Like {@link acquire} but synchronous when nothing overlaps: returns the
   * release function directly, or a promise of it when it must wait. Saves a
   * promise per write on the hot path.
   */
  tryAcquire(offset: number, length: number): (() => void) | Promise<() => void> {
    const start = offset;
    const end = offset + Math.max(length, 1);
    let waits: Promise<void>[] | undefined;
    for (const h of this.#held) {
      if (h.start < end && start < h.end) (waits ??= []).push(h.released);
    }
    let release!: () => void;
    const entry: Held = {
      start,
      end,
      released: new Promise<void>((resolve) => {
        release = resolve;
      }),
    };
    this.#held.add(entry);
    const unlock = (): void => {
      if (this.#held.delete(entry)) release();
    };
    if (waits === undefined) return unlock;
    return Promise.all(waits).then(() => unlock);
  }
}
