/**
 * When a small file operation may run synchronously on the event-loop thread.
 *
 * A read or write served by the page cache costs a few microseconds; sending it
 * to the libuv thread pool costs more than that in thread hand-offs. But an
 * operation that has to wait for the disk (a page-cache miss, the kernel
 * throttling dirty pages) would block every other connection of the process.
 * The gate lets operations of at most {@link INLINE_MAX_BYTES} run inline and
 * watches how long each takes: one slower than {@link INLINE_SLOW_MS} sends the
 * next {@link INLINE_BACKOFF_OPS} operations to the thread pool, after which
 * an inline one probes again.
 *
 * @module
 */

/** Largest operation run inline, in bytes. */
export const INLINE_MAX_BYTES = 64 * 1024;
/** An inline operation slower than this (ms) sends the next ones to the thread pool. */
export const INLINE_SLOW_MS = 1;
/** Operations sent to the thread pool after a slow inline one. */
export const INLINE_BACKOFF_OPS = 1024;

/** The inline/thread-pool decision for one kind of operation on one file. */
export class InlineGate {
  readonly #enabled: boolean;
  #backoff = 0;

  constructor(enabled: boolean) {
    this.#enabled = enabled;
  }

  /** True while the gate sends operations to the thread pool after a slow one. */
  get backingOff(): boolean {
    return this.#backoff > 0;
  }

  /**
   * Runs `operation` inline when allowed for `bytes` and returns its result,
   * or returns `undefined` without running it (use the thread pool). Errors
   * thrown by `operation` propagate.
   */
  run<T>(bytes: number, operation: () => T): T | undefined {
    if (!this.#enabled || bytes === 0 || bytes > INLINE_MAX_BYTES) return undefined;
    if (this.#backoff > 0) {
      this.#backoff--;
      return undefined;
    }
    const started = performance.now();
    try {
      return operation();
    } finally {
      if (performance.now() - started > INLINE_SLOW_MS) this.#backoff = INLINE_BACKOFF_OPS;
    }
  }
}
