/**
 * A {@link BlockDevice} wrapper that injects I/O errors and latency, for tests.
 *
 * @module
 */

import { systemClock } from '../clock.js';
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError } from '../errors.js';
import type { BlockDevice, BlockDeviceSupports, BlockExtent, WriteOptions } from './block-device.js';
import { checkRange, checkWriteData } from './range.js';

/** Operations a fault rule can match. `'any'` matches all four. */
export type FaultOp = 'read' | 'write' | 'flush' | 'trim' | 'any';

/** System error a fault rule injects: `EIO` → `BM_ERR_IO`, `ENOSPC` → `BM_ERR_NO_SPACE`. */
export type InjectedError = 'EIO' | 'ENOSPC';

/**
 * A fault rule of {@link FaultyBlockDevice}. It needs `error`, `latencyMs` or both.
 *
 * An operation *matches* the rule when its kind matches `op` and, if `range` is
 * set, the request overlaps `range` (flushes and zero-length requests overlap
 * nothing). Every matching operation is counted by the rule; the first
 * `afterOps` matching operations pass untouched, the following `times` ones
 * make the rule *fire*: the operation waits `latencyMs` (on the device's
 * clock), then fails with `error` without reaching the wrapped device. After
 * `times` firings the rule is spent (it stays listed, and never fires again).
 */
export interface FaultRule {
  /** Operation kind to match. Default `'any'`. */
  op?: FaultOp;
  /** Only requests overlapping this byte range match (need not be aligned). */
  range?: { offset: number; length: number };
  /** Number of matching operations to let through before the rule fires. Default 0. */
  afterOps?: number;
  /** Number of times the rule fires. Default `Infinity`. */
  times?: number;
  /** Error to inject; omit for a latency-only rule. */
  error?: InjectedError;
  /** Delay before the operation proceeds (or fails), in milliseconds. Default 0. */
  latencyMs?: number;
}

/** A rule added with {@link FaultyBlockDevice.addFault}. */
export interface InjectedFault {
  /** The rule as given (defaults filled in). */
  readonly rule: Readonly<Required<Omit<FaultRule, 'range' | 'error'>>> & Pick<FaultRule, 'range' | 'error'>;
  /** Matching operations seen since the rule was added. */
  readonly seen: number;
  /** Times the rule fired. */
  readonly fired: number;
  /** Removes the rule (operations already delayed by it are not affected). */
  remove(): void;
}

/** Counters of {@link FaultyBlockDevice}: operations that passed argument validation. */
export interface FaultyDeviceStats {
  reads: number;
  writes: number;
  flushes: number;
  trims: number;
  /** Operations failed with an injected error. */
  injectedErrors: number;
  /** Operations delayed by a latency rule. */
  delayed: number;
}

/** Options of {@link FaultyBlockDevice}. */
export interface FaultyBlockDeviceOptions {
  /** Clock for injected latency. Default `systemClock`; pass `clockFrom(fakeTimers)` in tests. */
  clock?: Clock;
}

type Op = Exclude<FaultOp, 'any'>;

const FAULT_OPS: ReadonlySet<string> = new Set<FaultOp>(['read', 'write', 'flush', 'trim', 'any']);

class Fault implements InjectedFault {
  readonly rule: InjectedFault['rule'];
  seen = 0;
  fired = 0;
  readonly #owner: Set<Fault>;

  constructor(rule: InjectedFault['rule'], owner: Set<Fault>) {
    this.rule = rule;
    this.#owner = owner;
  }

  remove(): void {
    this.#owner.delete(this);
  }

  matches(op: Op, offset: number, length: number): boolean {
    const { rule } = this;
    if (rule.op !== 'any' && rule.op !== op) return false;
    if (rule.range === undefined) return true;
    if (op === 'flush' || length === 0) return false;
    return offset < rule.range.offset + rule.range.length && rule.range.offset < offset + length;
  }
}

interface PendingDelay {
  handle: TimerHandle;
  reject(error: BlockMirrorError): void;
}

/**
 * Wraps a {@link BlockDevice} and injects errors (`EIO`, `ENOSPC`) and latency
 * by rules (see {@link FaultRule}).
 *
 * Arguments are validated first, with the same checks and codes as every
 * blockmirror device, so an invalid request is refused exactly as the wrapped
 * device would refuse it and is not seen by the rules. Injected errors are
 * {@link BlockMirrorError}s `BM_ERR_IO` / `BM_ERR_NO_SPACE` with
 * `details.injected === true`; the wrapped device is not called for a failed
 * operation. `close()` rejects operations still waiting on injected latency
 * with `BM_ERR_CLOSED` (they were not applied), then closes the wrapped device.
 *
 * `size`, `blockSize` and `supports` are those of the wrapped device.
 */
export class FaultyBlockDevice implements BlockDevice {
  /** The wrapped device. */
  readonly inner: BlockDevice;
  /** Size in bytes (of the wrapped device). */
  readonly size: number;
  /** Alignment unit in bytes (of the wrapped device). */
  readonly blockSize: number;
  /** Capabilities of the wrapped device. */
  readonly supports: BlockDeviceSupports;

  readonly #clock: Clock;
  readonly #faults = new Set<Fault>();
  readonly #pending = new Set<PendingDelay>();
  readonly #stats: FaultyDeviceStats = { reads: 0, writes: 0, flushes: 0, trims: 0, injectedErrors: 0, delayed: 0 };
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(inner: BlockDevice, options: FaultyBlockDeviceOptions = {}) {
    this.inner = inner;
    this.size = inner.size;
    this.blockSize = inner.blockSize;
    this.supports = inner.supports;
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Adds a rule. Rules are evaluated in the order they were added; every
   * matching rule counts the operation, every rule that fires delays it (the
   * largest latency applies) and the first firing rule with an `error` decides
   * the error.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a malformed rule.
   */
  addFault(rule: FaultRule): InjectedFault {
    const op = rule.op ?? 'any';
    const afterOps = rule.afterOps ?? 0;
    const times = rule.times ?? Infinity;
    const latencyMs = rule.latencyMs ?? 0;
    const bad = (why: string): never => {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `invalid fault rule: ${why}`, { details: { rule } });
    };
    if (!FAULT_OPS.has(op)) bad(`unknown op ${String(op)}`);
    if (!Number.isSafeInteger(afterOps) || afterOps < 0) bad('afterOps must be a non-negative integer');
    if (times !== Infinity && (!Number.isSafeInteger(times) || times < 1)) bad('times must be a positive integer');
    if (typeof latencyMs !== 'number' || !Number.isFinite(latencyMs) || latencyMs < 0) {
      bad('latencyMs must be a non-negative number');
    }
    if (rule.error !== undefined && rule.error !== 'EIO' && rule.error !== 'ENOSPC') {
      bad(`unknown error ${String(rule.error)}`);
    }
    if (rule.error === undefined && latencyMs === 0) bad('a rule needs an error or a latency');
    let range: FaultRule['range'];
    if (rule.range !== undefined) {
      const { offset, length } = rule.range;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        bad('range offset and length must be non-negative integers');
      }
      if (op === 'flush') bad('a flush has no range');
      range = { offset, length };
    }
    const fault = new Fault({ op, afterOps, times, latencyMs, range, error: rule.error }, this.#faults);
    this.#faults.add(fault);
    return fault;
  }

  /** Adds a latency-only rule: shorthand for `addFault({ ...where, latencyMs })`. */
  addLatency(latencyMs: number, where: Omit<FaultRule, 'latencyMs' | 'error'> = {}): InjectedFault {
    return this.addFault({ ...where, latencyMs });
  }

  /** Removes every rule. Operations already delayed are not affected. */
  clearFaults(): void {
    this.#faults.clear();
  }

  /** A copy of the operation counters. */
  get stats(): FaultyDeviceStats {
    return { ...this.#stats };
  }

  /** Reads through the wrapped device, unless a rule fails the read. */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    this.#stats.reads++;
    return this.#apply('read', offset, length, () => this.inner.read(offset, length));
  }

  /** Writes through the wrapped device, unless a rule fails the write. */
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.#closed) return Promise.reject(closedError());
    let length: number;
    try {
      length = checkWriteData(data);
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    this.#stats.writes++;
    return this.#apply('write', offset, length, () => this.inner.write(offset, data, options));
  }

  /** Flushes the wrapped device, unless a rule fails the flush. */
  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(closedError());
    this.#stats.flushes++;
    return this.#apply('flush', 0, 0, () => this.inner.flush());
  }

  /** Trims through the wrapped device (`BM_ERR_NOT_SUPPORTED` when it cannot trim), unless a rule fails the trim. */
  trim(offset: number, length: number): Promise<void> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    const inner = this.inner;
    const innerTrim = inner.trim;
    if (!this.supports.trim || innerTrim === undefined) {
      return Promise.reject(new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'the wrapped device does not support trim'));
    }
    this.#stats.trims++;
    return this.#apply('trim', offset, length, () => innerTrim.call(inner, offset, length));
  }
  /**
   * The wrapped device's allocation map (no rule applies to it: faults only
   * fail or delay operations, so the wrapped content stays the truth).
   * Rejects with `BM_ERR_NOT_SUPPORTED` when the wrapped device has none.
   */
  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    const inner = this.inner;
    const innerStatus = inner.blockStatus;
    if (inner.supports.allocation !== true || innerStatus === undefined) {
      return Promise.reject(new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'the wrapped device does not know its allocation'));
    }
    return innerStatus.call(inner, offset, length);
  }


  /**
   * Rejects operations waiting on injected latency with `BM_ERR_CLOSED`, then
   * closes the wrapped device. Idempotent: every call returns the same promise.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#closed = true;
      for (const pending of this.#pending) {
        this.#clock.clearTimeout(pending.handle);
        pending.reject(closedError());
      }
      this.#pending.clear();
      this.#closing = this.inner.close();
    }
    return this.#closing;
  }

  #apply<T>(op: Op, offset: number, length: number, proceed: () => Promise<T>): Promise<T> {
    let latency = 0;
    let error: InjectedError | undefined;
    for (const fault of this.#faults) {
      if (!fault.matches(op, offset, length)) continue;
      fault.seen++;
      if (fault.seen <= fault.rule.afterOps || fault.fired >= fault.rule.times) continue;
      fault.fired++;
      latency = Math.max(latency, fault.rule.latencyMs);
      error ??= fault.rule.error;
    }
    if (error !== undefined) this.#stats.injectedErrors++;
    const finish = (): Promise<T> =>
      error === undefined ? proceed() : Promise.reject(injectedError(error, op, offset, length));
    if (latency === 0) return finish();
    this.#stats.delayed++;
    return new Promise<void>((resolve, reject) => {
      const pending: PendingDelay = {
        reject,
        handle: this.#clock.setTimeout(() => {
          this.#pending.delete(pending);
          resolve();
        }, latency),
      };
      this.#pending.add(pending);
    }).then(finish);
  }
}

function closedError(): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CLOSED', 'the faulty device is closed');
}

function injectedError(kind: InjectedError, op: Op, offset: number, length: number): BlockMirrorError {
  const cause = Object.assign(new Error(`${kind}: injected fault`), { code: kind });
  return new BlockMirrorError(
    kind === 'EIO' ? 'BM_ERR_IO' : 'BM_ERR_NO_SPACE',
    `injected ${kind} on ${op}${op === 'flush' ? '' : ` of ${length} bytes at ${offset}`}`,
    { cause, details: { injected: true, op, offset, length } },
  );
}
