/**
 * When a small file operation may run synchronously on the event-loop thread.
 *
 * A read or write served by the page cache costs a few microseconds; sending it
 * to the libuv thread pool costs more than that in thread hand-offs. But an
 * operation that has to wait for the disk (a page-cache miss, the kernel
 * throttling dirty pages) would block every other connection of the process.
 * The gate lets operations of at most {@link INLINE_MAX_BYTES} run inline and
 * watches how long each takes: one slower than {@link INLINE_SLOW_MS}, or
 * (when the gate has a mean limit) a running mean above that limit, sends the
 * next {@link INLINE_BACKOFF_OPS} operations to the thread pool, after which
 * inline ones probe again. The mean catches reads that miss the page cache
 * on a fast disk (tens of microseconds each: not slow one by one, but run
 * inline they would wait for the disk one at a time where the thread pool
 * overlaps them).
 *
 * @module
 */

/** Largest operation run inline, in bytes. */
export const INLINE_MAX_BYTES = 64 * 1024;
/** An inline operation slower than this (ms) sends the next ones to the thread pool. */
export const INLINE_SLOW_MS = 1;
/**
 * An excused inline operation (see {@link InlineGate.run}) still counts as
 * slow above this many ms: a disk that slow sends the next operations to
 * the thread pool whatever else is going on.
 */
export const INLINE_EXCUSED_MS = 10;
/** Operations sent to the thread pool after a slow inline one. */
export const INLINE_BACKOFF_OPS = 1024;
/** Weight of the newest duration in the running mean (1/16). */
const MEAN_WEIGHT = 1 / 16;

/** The inline/thread-pool decision for one kind of operation on one file. */
export class InlineGate {
  readonly #enabled: boolean;
  readonly #meanLimitMs: number;
  #backoff = 0;
  #meanMs = 0;

  /**
   * @param enabled - false: nothing runs inline.
   * @param meanLimitMs - back off when the running mean of inline durations
   *   (weight 1/16 for the newest) exceeds this; default: no mean limit.
   */
  constructor(enabled: boolean, meanLimitMs = Infinity) {
    this.#enabled = enabled;
    this.#meanLimitMs = meanLimitMs;
  }

  /** True while the gate sends operations to the thread pool after a slow one. */
  get backingOff(): boolean {
    return this.#backoff > 0;
  }

  /**
   * Runs `operation` inline when allowed for `bytes` and returns its result,
   * or returns `undefined` without running it (use the thread pool). Errors
   * thrown by `operation` propagate. `excused`: the caller knows why this one
   * may be slow for a moment (a write while the file is being synced waits
   * for the sync), so up to {@link INLINE_EXCUSED_MS} it does not send the
   * next operations to the thread pool and is left out of the mean.
   */
  run<T>(bytes: number, operation: () => T, excused = false): T | undefined {
    if (!this.#enabled || bytes === 0 || bytes > INLINE_MAX_BYTES) return undefined;
    if (this.#backoff > 0) {
      this.#backoff--;
      return undefined;
    }
    const started = performance.now();
    try {
      return operation();
    } finally {
      const ms = performance.now() - started;
      // an excused wait (see above) is neither slow nor part of the mean
      if (!excused || ms > INLINE_EXCUSED_MS) {
        this.#meanMs += (ms - this.#meanMs) * MEAN_WEIGHT;
        if (ms > INLINE_SLOW_MS || this.#meanMs > this.#meanLimitMs) {
          this.#backoff = INLINE_BACKOFF_OPS;
          this.#meanMs = 0;
        }
      }
    }
  }
}
