/**
 * A budget of bytes shared by many holders (the NBD server's connections):
 * a holder takes bytes before it buffers a request's payload or reply, gives
 * them back when the reply has left the process, and waits (stops reading its
 * socket) while the budget is used up. Nothing is ever dropped: a holder that
 * cannot take is woken by the next release.
 *
 * @module
 */

/** Something that waits for room in a {@link ByteBudget}. */
export interface BudgetWaiter {
  /** Called (at most once per wait) when bytes were released; the waiter retries its take. */
  wake(): void;
}

/**
 * A byte budget: see the module comment.
 *
 * A holder that holds nothing may always take one request, past `limit`:
 * a client that reads its replies keeps making progress while clients that
 * do not read hold the shared part. So at most `limit` bytes plus one
 * request per holder are held.
 */
export class ByteBudget {
  /** Bytes shared by all holders (a holder that holds nothing may always take one request on top). */
  readonly limit: number;
  #used = 0;
  #peak = 0;
  #waits = 0;
  readonly #waiters = new Set<BudgetWaiter>();

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes held now. */
  get used(): number {
    return this.#used;
  }

  /** Most bytes held at once since creation. */
  get peak(): number {
    return this.#peak;
  }

  /** Times a holder had to wait for room. */
  get waits(): number {
    return this.#waits;
  }

  /** Holders waiting for room now. */
  get waiting(): number {
    return this.#waiters.size;
  }

  /**
   * Takes `bytes` when they fit, or when `holds` is 0 (the holder holds
   * nothing else: one request each always passes).
   * Otherwise records `waiter` to be woken by the next release and returns false.
   */
  tryTake(bytes: number, waiter: BudgetWaiter, holds: number): boolean {
    if (bytes <= 0) return true;
    if (holds > 0 && this.#used + bytes > this.limit) {
      if (!this.#waiters.has(waiter)) {
        this.#waits++;
        this.#waiters.add(waiter);
      }
      return false;
    }
    this.#waiters.delete(waiter);
    this.#used += bytes;
    if (this.#used > this.#peak) this.#peak = this.#used;
    return true;
  }

  /** Gives `bytes` back and wakes every waiter (each retries; those that still do not fit wait again). */
  release(bytes: number): void {
    if (bytes <= 0) return;
    this.#used = Math.max(0, this.#used - bytes);
    if (this.#waiters.size === 0) return;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const w of waiters) w.wake();
  }

  /** Forgets a waiter that went away (a closed connection). */
  cancel(waiter: BudgetWaiter): void {
    this.#waiters.delete(waiter);
  }
}
