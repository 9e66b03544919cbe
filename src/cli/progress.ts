/**
 * Progress output for long operations (initial sync, resync, verify): a
 * progress bar redrawn in place on a TTY, one JSON line per interval
 * otherwise (logs, pipes, CI).
 *
 * @module
 */
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { formatBytes } from './table.js';

/** Where progress goes: a writable stream, a TTY when `isTTY` is true. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  /** Terminal width (TTY only). */
  columns?: number;
}

/** Options of {@link createProgress}. */
export interface ProgressOptions {
  /** What is progressing, e.g. `resync vol0`. */
  label: string;
  /** Total amount of work (bytes with `unit: 'bytes'`). */
  total: number;
  /** Default `'bytes'` (amounts shown as KiB/MiB; rate per second). */
  unit?: 'bytes' | 'items';
  /** Default `process.stderr`. */
  stream?: ProgressStream;
  /** Milliseconds between outputs: default 100 on a TTY, 1000 otherwise. */
  interval?: number;
  /** Time source (default {@link systemClock}; its timers never hold the process open). */
  clock?: Clock;
}

/** One non-TTY progress line (JSON). */
export interface ProgressRecord {
  type: 'progress';
  label: string;
  done: number;
  total: number;
  /** 0–100, one decimal. */
  percent: number;
  /** Units per second since start (0 before any time passed). */
  rate: number;
  elapsedMs: number;
  /** Estimated time left, ms (absent when unknown). */
  etaMs?: number;
  /** Present (true) on the last line, written by `finish()`. */
  finished?: true;
}

/** A running progress display (see {@link createProgress}). */
export interface Progress {
  /** Sets the amount done so far (clamped to 0…total). */
  update(done: number): void;
  /** Adds `n` to the amount done. */
  add(n: number): void;
  /** Changes the total (work can grow while it runs, e.g. new dirty regions). */
  setTotal(total: number): void;
  /** Current amount done. */
  readonly done: number;
  /** Writes the final state (100 % unless `aborted`) and stops the timer. Idempotent. */
  finish(options?: { aborted?: boolean }): void;
}

const BAR_WIDTH = 30;

function formatDuration(ms: number): string {
  const s = Math.ceil(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/**
 * Starts a progress display. On a TTY it redraws one line in place (`\r`,
 * clear to end of line) every `interval` ms and ends it with a newline on
 * `finish()`. Otherwise it writes one {@link ProgressRecord} JSON line every
 * `interval` ms (also when nothing moved, so a stall is visible) and a last
 * one with `finished: true`.
 */
export function createProgress(options: ProgressOptions): Progress {
  const stream: ProgressStream = options.stream ?? process.stderr;
  const tty = stream.isTTY === true;
  const clock = options.clock ?? systemClock;
  const interval = options.interval ?? (tty ? 100 : 1000);
  let total = Math.max(0, options.total);
  const bytes = (options.unit ?? 'bytes') === 'bytes';
  const started = clock.now();
  let done = 0;
  let finished = false;

  const record = (final: boolean): ProgressRecord => {
    const elapsedMs = Math.max(0, clock.now() - started);
    const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0;
    const r: ProgressRecord = {
      type: 'progress',
      label: options.label,
      done,
      total,
      percent: total === 0 ? 100 : Math.round((done / total) * 1000) / 10,
      rate: Math.round(rate),
      elapsedMs: Math.round(elapsedMs),
    };
    if (!final && rate > 0 && done < total) r.etaMs = Math.round(((total - done) / rate) * 1000);
    if (final) r.finished = true;
    return r;
  };

  const amount = (n: number): string => (bytes ? formatBytes(n) : String(n));

  const render = (final: boolean): void => {
    const r = record(final);
    if (!tty) {
      stream.write(`${JSON.stringify(r)}\n`);
      return;
    }
    const filled = total === 0 ? BAR_WIDTH : Math.round((done / total) * BAR_WIDTH);
    const bar = `${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}`;
    const rate = bytes ? `${formatBytes(r.rate)}/s` : `${r.rate}/s`;
    const eta = r.etaMs === undefined ? '' : `  ETA ${formatDuration(r.etaMs)}`;
    let line = `${options.label} [${bar}] ${r.percent.toFixed(1).padStart(5)}%  ${amount(done)} / ${amount(total)}  ${rate}${eta}`;
    const width = stream.columns;
    if (width !== undefined && width > 10 && line.length >= width) line = line.slice(0, width - 1);
    stream.write(`\r${line}\x1b[K${final ? '\n' : ''}`);
  };

  const timer: TimerHandle = clock.setInterval(() => render(false), interval);

  const set = (n: number): void => {
    if (finished || Number.isNaN(n)) return;
    done = Math.min(total, Math.max(0, n));
  };

  return {
    update: set,
    add: (n) => set(done + n),
    setTotal(n) {
      if (finished || Number.isNaN(n)) return;
      total = Math.max(0, n);
      done = Math.min(done, total);
    },
    get done() {
      return done;
    },
    finish(opts = {}) {
      if (finished) return;
      if (opts.aborted !== true) done = total;
      finished = true;
      clock.clearInterval(timer);
      render(true);
    },
  };
}
