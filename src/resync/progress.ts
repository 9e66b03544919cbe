/**
 * {@link ProgressTracker}: progress of a long background operation (initial
 * sync, resync, verify): bytes done of a total, a moving-average rate, an
 * ETA, throttled `progress` events and a plain snapshot for `status()`.
 *
 * @module
 */

import { EventEmitter } from 'eventemitter3';
import type { Clock, TimerHandle } from '../clock.js';
import { systemClock } from '../clock.js';
import { BlockMirrorError } from '../errors.js';

/** A plain, JSON-friendly view of a {@link ProgressTracker}. */
export interface ProgressSnapshot {
  /** Bytes done. */
  done: number;
  /** Bytes in total (may grow while the operation runs, e.g. new dirty regions). */
  total: number;
  /** `max(0, total - done)`. */
  remaining: number;
  /** 0–100 (100 when `total` is 0). */
  percent: number;
  /** Moving-average rate over the last `windowMs`, bytes per second (0 until time passed). */
  bytesPerSecond: number;
  /** Average rate since the start, bytes per second. */
  averageBytesPerSecond: number;
  /** Estimated milliseconds left at the moving-average rate; 0 when done, null while the rate is 0. */
  etaMs: number | null;
  /** Milliseconds since the tracker was created (until `finish()`). */
  elapsedMs: number;
  /** `finish()` was called. */
  finished: boolean;
}

/** Events of a {@link ProgressTracker}. */
export interface ProgressTrackerEvents {
  /** At most once every `intervalMs`, after progress was made (the latest state is always emitted). */
  progress: [snapshot: ProgressSnapshot];
  /** Once, from `finish()`. */
  finish: [snapshot: ProgressSnapshot];
}

/** Options of {@link ProgressTracker}. */
export interface ProgressTrackerOptions {
  /** Bytes in total. */
  total: number;
  /** Bytes already done (e.g. a resumed resync). Default 0. */
  done?: number;
  /** Least milliseconds between two `progress` events. Default 1000. */
  intervalMs?: number;
  /** Window of the moving-average rate, ms. Default 10000. */
  windowMs?: number;
  /** Time source. Default {@link systemClock}. */
  clock?: Clock;
}

interface Sample {
  t: number;
  done: number;
}

function nonNegative(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `progress ${name} must be a non-negative safe integer, got ${String(value)}`);
  }
  return value;
}

function positiveMs(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `progress ${name} must be a number > 0, got ${String(value)}`);
  }
  return value;
}

/**
 * Tracks bytes done against a total. Call {@link ProgressTracker.add} as work
 * completes; listen to `progress` (throttled to one per `intervalMs`, leading
 * and trailing edge) or read {@link ProgressTracker.snapshot} at any time.
 *
 * @example
 * ```ts
 * const progress = new ProgressTracker({ total: bitmap.dirtyBytes, intervalMs: 500 });
 * progress.on('progress', (s) => log(`${s.percent.toFixed(1)} % ETA ${s.etaMs} ms`));
 * // … progress.add(region.length) per region sent, then progress.finish()
 * ```
 */
export class ProgressTracker extends EventEmitter<ProgressTrackerEvents> {
  readonly #clock: Clock;
  readonly #intervalMs: number;
  readonly #windowMs: number;
  readonly #sampleEvery: number;
  readonly #startedAt: number;
  readonly #startDone: number;
  #done: number;
  #total: number;
  /** Samples of (time, done), oldest first; the first is at or before the window start. */
  #samples: Sample[];
  #lastEmit = -Infinity;
  #timer: TimerHandle | null = null;
  #finishedAt: number | null = null;

  /**
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options.
   */
  constructor(options: ProgressTrackerOptions) {
    super();
    this.#total = nonNegative('total', options?.total);
    this.#done = nonNegative('done', options.done ?? 0);
    this.#intervalMs = positiveMs('intervalMs', options.intervalMs, 1000);
    this.#windowMs = positiveMs('windowMs', options.windowMs, 10_000);
    this.#sampleEvery = this.#windowMs / 20;
    this.#clock = options.clock ?? systemClock;
    this.#startedAt = this.#clock.now();
    this.#startDone = this.#done;
    this.#samples = [{ t: this.#startedAt, done: this.#done }];
  }

  /** Bytes done. */
  get done(): number {
    return this.#done;
  }

  /** Bytes in total. */
  get total(): number {
    return this.#total;
  }

  /** True once {@link ProgressTracker.finish} was called. */
  get finished(): boolean {
    return this.#finishedAt !== null;
  }

  /** Adds `bytes` to the amount done. Ignored after `finish()`. */
  add(bytes: number): void {
    nonNegative('bytes', bytes);
    if (this.#finishedAt !== null || bytes === 0) return;
    this.#done += bytes;
    this.#changed();
  }

  /**
   * Sets the amount done. Going backwards (e.g. a restarted pass) restarts
   * the moving average. Ignored after `finish()`.
   */
  update(done: number): void {
    nonNegative('done', done);
    if (this.#finishedAt !== null || done === this.#done) return;
    if (done < this.#done) this.#samples = [{ t: this.#clock.now(), done }];
    this.#done = done;
    this.#changed();
  }

  /** Changes the total (e.g. regions dirtied while a resync runs). Ignored after `finish()`. */
  setTotal(total: number): void {
    nonNegative('total', total);
    if (this.#finishedAt !== null || total === this.#total) return;
    this.#total = total;
    this.#changed();
  }

  #changed(): void {
    const now = this.#clock.now();
    const last = this.#samples[this.#samples.length - 1] as Sample;
    if (now - last.t >= this.#sampleEvery) this.#samples.push({ t: now, done: this.#done });
    this.#trim(now);
    if (now - this.#lastEmit >= this.#intervalMs) {
      this.#emitProgress(now);
    } else if (this.#timer === null) {
      this.#timer = this.#clock.setTimeout(() => {
        this.#timer = null;
        if (this.#finishedAt === null) this.#emitProgress(this.#clock.now());
      }, this.#lastEmit + this.#intervalMs - now);
    }
  }

  /** Drops samples older than needed: keeps one at or before `now - windowMs`. */
  #trim(now: number): void {
    const start = now - this.#windowMs;
    let drop = 0;
    while (drop + 1 < this.#samples.length && (this.#samples[drop + 1] as Sample).t <= start) drop++;
    if (drop > 0) this.#samples.splice(0, drop);
  }

  #emitProgress(now: number): void {
    this.#lastEmit = now;
    this.emit('progress', this.#snapshotAt(now));
  }

  #snapshotAt(now: number): ProgressSnapshot {
    const end = this.#finishedAt ?? now;
    this.#trim(end);
    const first = this.#samples[0] as Sample;
    const span = end - first.t;
    const bytesPerSecond = span > 0 ? ((this.#done - first.done) * 1000) / span : 0;
    const elapsedMs = end - this.#startedAt;
    const averageBytesPerSecond = elapsedMs > 0 ? Math.max(0, ((this.#done - this.#startDone) * 1000) / elapsedMs) : 0;
    const remaining = Math.max(0, this.#total - this.#done);
    let etaMs: number | null;
    if (remaining === 0) etaMs = 0;
    else if (bytesPerSecond > 0) etaMs = Math.round((remaining * 1000) / bytesPerSecond);
    else etaMs = null;
    return {
      done: this.#done,
      total: this.#total,
      remaining,
      percent: this.#total === 0 ? 100 : Math.min(100, (this.#done * 100) / this.#total),
      bytesPerSecond,
      averageBytesPerSecond,
      etaMs,
      elapsedMs,
      finished: this.#finishedAt !== null,
    };
  }

  /** The current state (computed now; no event). */
  snapshot(): ProgressSnapshot {
    return this.#snapshotAt(this.#clock.now());
  }

  /** Stops the tracker: cancels a pending `progress` event and emits `finish` once. Idempotent. */
  finish(): void {
    if (this.#finishedAt !== null) return;
    if (this.#timer !== null) {
      this.#clock.clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#finishedAt = this.#clock.now();
    this.emit('finish', this.#snapshotAt(this.#finishedAt));
  }
}
