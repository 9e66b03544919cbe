/**
 * A token bucket on an injectable {@link Clock}: caps the bytes per second a
 * cycle sends to a target.
 *
 * @module
 */
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError } from '../errors.js';

/** Token bucket: `take(n)` resolves when `n` more bytes fit under the rate. */
export class RateLimiter {
  /** Bytes per second. */
  readonly rate: number;
  readonly #burst: number;
  readonly #clock: Clock;
  #tokens: number;
  #last: number;
  readonly #timers = new Map<TimerHandle, () => void>();

  /**
   * @param bytesPerSecond - the cap.
   * @param burst - bytes that may go at once after an idle time (default: 1/10 s worth, at least 64 KiB).
   */
  constructor(bytesPerSecond: number, clock: Clock, burst?: number) {
    if (typeof bytesPerSecond !== 'number' || !Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'bandwidth must be a positive number of bytes per second', { details: { bandwidth: bytesPerSecond } });
    }
    this.rate = bytesPerSecond;
    this.#burst = burst ?? Math.max(64 * 1024, bytesPerSecond / 10);
    this.#clock = clock;
    this.#tokens = this.#burst;
    this.#last = clock.now();
  }

  /** Takes `n` bytes; resolves once they may be sent (a debt is paid off by waiting). */
  take(n: number): Promise<void> {
    const now = this.#clock.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.rate) / 1000);
    this.#last = now;
    this.#tokens -= n;
    if (this.#tokens >= 0) return Promise.resolve();
    const wait = Math.ceil((-this.#tokens / this.rate) * 1000);
    return new Promise<void>((resolve) => {
      const timer = this.#clock.setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, wait);
      this.#timers.set(timer, resolve);
    });
  }

  /** Releases every waiter at once (used when the transfer is abandoned). */
  cancel(): void {
    for (const [timer, resolve] of this.#timers) {
      this.#clock.clearTimeout(timer);
      resolve();
    }
    this.#timers.clear();
  }
}
