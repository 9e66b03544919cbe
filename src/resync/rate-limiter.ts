/**
 * {@link RateLimiter}: a token bucket in bytes per second for background
 * traffic (resync, initial sync, verify), on an injectable {@link Clock}.
 *
 * @module
 */

import type { Clock, TimerHandle } from '../clock.js';
import { systemClock } from '../clock.js';
import { BlockMirrorError } from '../errors.js';

/** Options of {@link RateLimiter}. */
export interface RateLimiterOptions {
  /** Sustained rate in bytes per second; `0` or `Infinity` = unlimited. */
  bytesPerSecond: number;
  /**
   * Bucket size in bytes: how much may pass at once after an idle period.
   * Default: 100 ms worth of `bytesPerSecond` (at least 1 byte).
   */
  burst?: number;
  /** Time source. Default {@link systemClock} (its timers do not hold the process open). */
  clock?: Clock;
}

/** Options of {@link RateLimiter.take}. */
export interface RateLimiterTakeOptions {
  /** Aborting removes the request from the queue and rejects it with `signal.reason`. */
  signal?: AbortSignal;
}

interface Waiter {
  readonly bytes: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: (() => void) | undefined;
  done: boolean;
}

const RESOLVED: Promise<void> = Promise.resolve();

function checkRate(value: unknown): number {
  if (typeof value !== 'number' || Number.isNaN(value) || value < 0 || (!Number.isFinite(value) && value !== Infinity)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `bytesPerSecond must be a number >= 0 (0 or Infinity: unlimited), got ${String(value)}`);
  }
  return value;
}

function checkBurst(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `burst must be a finite number > 0, got ${String(value)}`);
  }
  return value;
}

function unlimited(rate: number): boolean {
  return rate === 0 || rate === Infinity;
}

/**
 * A FIFO token bucket. {@link RateLimiter.take} resolves once `bytes` may be
 * sent. Requests are served strictly in order, and a request larger than the
 * bucket is never starved: it goes as soon as the bucket is full and leaves it
 * in debt, which later requests wait out, so the long-run rate stays exact.
 *
 * @example
 * ```ts
 * const limiter = new RateLimiter({ bytesPerSecond: 50 * 1024 * 1024 });
 * for (const region of bitmap.dirtyRegions()) {
 *   await limiter.take(region.length);
 *   await send(region);
 * }
 * ```
 */
export class RateLimiter {
  readonly #clock: Clock;
  #rate: number;
  #burst: number;
  /** The burst was given explicitly (kept by {@link RateLimiter.setRate} unless replaced). */
  #burstSet: boolean;
  /** Tokens (bytes) available; negative while in debt. */
  #tokens: number;
  #last: number;
  readonly #queue: Waiter[] = [];
  #head = 0;
  #timer: TimerHandle | null = null;
  #closed = false;

  /**
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad rate or burst.
   */
  constructor(options: RateLimiterOptions) {
    this.#rate = checkRate(options?.bytesPerSecond);
    const burst = checkBurst(options.burst);
    this.#burstSet = burst !== undefined;
    this.#burst = burst ?? RateLimiter.#defaultBurst(this.#rate);
    this.#clock = options.clock ?? systemClock;
    this.#tokens = this.#burst;
    this.#last = this.#clock.now();
  }

  static #defaultBurst(rate: number): number {
    return unlimited(rate) ? 1 : Math.max(1, rate / 10);
  }

  /** Current rate in bytes per second (`0` or `Infinity`: unlimited). */
  get bytesPerSecond(): number {
    return this.#rate;
  }

  /** Bucket size in bytes. */
  get burst(): number {
    return this.#burst;
  }

  /** Requests waiting. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** Bytes that could pass now without waiting (negative while in debt; `Infinity` when unlimited). */
  get available(): number {
    if (unlimited(this.#rate)) return Infinity;
    this.#refill();
    return this.#tokens;
  }

  #refill(): void {
    const now = this.#clock.now();
    const elapsed = now - this.#last;
    this.#last = now;
    if (elapsed > 0 && !unlimited(this.#rate)) {
      this.#tokens = Math.min(this.#burst, this.#tokens + (elapsed * this.#rate) / 1000);
    }
  }

  /** True when the bucket holds enough for `bytes` (a request larger than the bucket needs a full bucket). */
  #enough(bytes: number): boolean {
    const need = Math.min(bytes, this.#burst);
    // Tolerance for floating-point rounding of the refill.
    return this.#tokens >= need - 1e-9 * Math.max(1, need);
  }

  /**
   * Resolves once `bytes` may pass, after every earlier request. Unlimited:
   * at once. Returns an already resolved promise when nothing waits and the
   * bucket holds enough.
   *
   * @throws {BlockMirrorError} (as a rejection) `BM_ERR_INVALID_ARGUMENT` for a bad
   *   `bytes`, `BM_ERR_CLOSED` after {@link RateLimiter.close}.
   */
  take(bytes: number, options: RateLimiterTakeOptions = {}): Promise<void> {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      return Promise.reject(new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `bytes must be a non-negative safe integer, got ${String(bytes)}`));
    }
    if (this.#closed) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'rate limiter is closed'));
    const signal = options.signal;
    if (signal?.aborted === true) return Promise.reject(signal.reason);
    if (this.pending === 0) {
      if (unlimited(this.#rate)) return RESOLVED;
      this.#refill();
      if (this.#enough(bytes)) {
        this.#tokens -= bytes;
        return RESOLVED;
      }
    }
    return new Promise<void>((resolve, reject) => {
      const abort = (): void => {
        if (waiter.done) return;
        waiter.done = true;
        const wasHead = this.#queue[this.#head] === waiter;
        const at = this.#queue.indexOf(waiter, this.#head);
        if (at >= 0) this.#queue.splice(at, 1);
        reject(signal?.reason);
        if (wasHead) this.#pump();
      };
      const waiter: Waiter = { bytes, resolve, reject, signal, onAbort: signal === undefined ? undefined : abort, done: false };
      signal?.addEventListener('abort', abort, { once: true });
      this.#queue.push(waiter);
      if (this.pending === 1) this.#pump();
    });
  }

  /**
   * Serves the queue head while the bucket allows, then arms a timer for the
   * next one. A waiting request is served at the exact (virtual) instant the
   * bucket reached its need, even when the timer fired later, so timer
   * granularity never lowers the rate.
   */
  #pump(): void {
    if (this.#timer !== null) {
      this.#clock.clearTimeout(this.#timer);
      this.#timer = null;
    }
    const now = this.#clock.now();
    let wakeAt = 0;
    for (let waiter = this.#queue[this.#head]; waiter !== undefined; waiter = this.#queue[this.#head]) {
      if (!unlimited(this.#rate)) {
        if (!this.#enough(waiter.bytes)) {
          // Tokens are counted as of #last and below the need (≤ burst): they grow linearly up to it.
          const need = Math.min(waiter.bytes, this.#burst);
          const reachAt = this.#last + ((need - this.#tokens) * 1000) / this.#rate;
          if (reachAt > now + 1e-6) {
            wakeAt = reachAt;
            break;
          }
          this.#tokens = need;
          this.#last = Math.min(reachAt, now);
        }
        this.#tokens -= waiter.bytes;
      }
      this.#shift();
      this.#settle(waiter);
      waiter.resolve();
    }
    this.#refill();
    if (this.#queue[this.#head] !== undefined && !this.#closed) {
      // The small slack keeps float noise (62.0000001 ms) from costing a whole extra millisecond.
      const ms = Math.max(1, Math.ceil(wakeAt - now - 1e-6));
      this.#timer = this.#clock.setTimeout(() => {
        this.#timer = null;
        this.#pump();
      }, ms);
    }
  }

  #shift(): void {
    this.#head++;
    if (this.#head > 64 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }

  #settle(waiter: Waiter): void {
    waiter.done = true;
    if (waiter.onAbort !== undefined) waiter.signal?.removeEventListener('abort', waiter.onAbort);
  }

  /**
   * Changes the rate (and the burst, when given; otherwise an explicit burst
   * is kept and a default one follows the rate). Bytes already earned at the
   * old rate are kept (up to the new burst); waiting requests are rescheduled.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad rate or burst.
   */
  setRate(bytesPerSecond: number, burst?: number): void {
    const rate = checkRate(bytesPerSecond);
    const newBurst = checkBurst(burst);
    this.#refill();
    const wasUnlimited = unlimited(this.#rate);
    this.#rate = rate;
    if (newBurst !== undefined) {
      this.#burst = newBurst;
      this.#burstSet = true;
    } else if (!this.#burstSet) {
      this.#burst = RateLimiter.#defaultBurst(rate);
    }
    this.#tokens = wasUnlimited ? this.#burst : Math.min(this.#tokens, this.#burst);
    this.#last = this.#clock.now();
    this.#pump();
  }

  /** Rejects every waiting request with `BM_ERR_CLOSED` and refuses new ones. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) {
      this.#clock.clearTimeout(this.#timer);
      this.#timer = null;
    }
    const waiting = this.#queue.splice(this.#head);
    this.#queue.length = 0;
    this.#head = 0;
    for (const waiter of waiting) {
      this.#settle(waiter);
      waiter.reject(new BlockMirrorError('BM_ERR_CLOSED', 'rate limiter is closed'));
    }
  }
}
