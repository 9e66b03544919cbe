/**
 * A fixed-bucket latency histogram (Prometheus style: cumulative buckets,
 * sum and count), fed with durations in seconds.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';

/**
 * Default bucket upper bounds in seconds: 50 µs … 10 s, roughly ×2–2.5 apart,
 * dense where block writes land (loopback sync writes are a few hundred µs).
 */
export const DEFAULT_LATENCY_BUCKETS: readonly number[] = Object.freeze([
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]);

/** One cumulative bucket of a {@link HistogramSnapshot}. */
export interface HistogramBucket {
  /** Upper bound in seconds (`Infinity` for the last bucket). */
  le: number;
  /** Observations ≤ `le` (cumulative). */
  count: number;
}

/** Point-in-time copy of a {@link LatencyHistogram}. */
export interface HistogramSnapshot {
  /** Cumulative buckets in increasing `le` order, the last one `le: Infinity` (= `count`). */
  buckets: HistogramBucket[];
  /** Sum of all observations, seconds. */
  sum: number;
  /** Number of observations. */
  count: number;
}

/**
 * Counts observations (seconds) into fixed buckets. `observe` is O(buckets)
 * with no allocation, so it can sit on the write path.
 */
export class LatencyHistogram {
  /** Upper bounds in seconds, strictly increasing, finite (the `+Inf` bucket is implicit). */
  readonly bounds: readonly number[];
  /** Per-bucket (non-cumulative) counts; the last slot is the overflow (> last bound). */
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  /** @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` unless `bounds` are positive, finite and strictly increasing. */
  constructor(bounds: readonly number[] = DEFAULT_LATENCY_BUCKETS) {
    if (!Array.isArray(bounds) || bounds.length === 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'histogram bounds must be a non-empty array');
    }
    for (let i = 0; i < bounds.length; i++) {
      const b = bounds[i];
      if (typeof b !== 'number' || !Number.isFinite(b) || b <= 0 || (i > 0 && b <= bounds[i - 1]!)) {
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'histogram bounds must be positive, finite and strictly increasing', {
          details: { bounds },
        });
      }
    }
    this.bounds = Object.freeze([...bounds]);
    this.#counts = new Array<number>(bounds.length + 1).fill(0);
  }

  /** Records one duration in seconds (negative values count as 0; NaN is ignored). */
  observe(seconds: number): void {
    if (Number.isNaN(seconds)) return;
    const v = seconds < 0 ? 0 : seconds;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && v > bounds[i]!) i++;
    this.#counts[i]!++;
    this.#sum += v;
    this.#count++;
  }

  /** Number of observations so far. */
  get count(): number {
    return this.#count;
  }

  /** Sum of observations so far, seconds. */
  get sum(): number {
    return this.#sum;
  }

  /**
   * Estimated `q`-quantile (0 < q ≤ 1) in seconds: the upper bound of the
   * bucket holding it (`Infinity` past the last bound; `NaN` when empty).
   */
  quantile(q: number): number {
    if (this.#count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.#count));
    let seen = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      seen += this.#counts[i]!;
      if (seen >= rank) return this.bounds[i]!;
    }
    return Infinity;
  }

  /** Cumulative buckets, sum and count. */
  snapshot(): HistogramSnapshot {
    const buckets: HistogramBucket[] = [];
    let running = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      running += this.#counts[i]!;
      buckets.push({ le: this.bounds[i]!, count: running });
    }
    buckets.push({ le: Infinity, count: this.#count });
    return { buckets, sum: this.#sum, count: this.#count };
  }

  /** Forgets every observation. */
  reset(): void {
    this.#counts.fill(0);
    this.#sum = 0;
    this.#count = 0;
  }
}
