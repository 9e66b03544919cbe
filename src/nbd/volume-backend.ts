/**
 * Adapters that let an `NbdServer` serve blockmirror volumes: a
 * primary's volumes (read-write, replicated by the volume's mode) and a
 * mirror target's volumes (read-only).
 *
 * @module
 */
import createDebug from 'debug';
import { systemClock, type Clock } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { BlockMirrorError } from '../errors.js';
import type { PrimaryVolume, WriteResult } from '../replication/primary-volume.js';
import type { TargetVolume } from '../replication/mirror-target.js';
import type { NbdBackend, NbdWriteZeroesOptions } from './export.js';

const log = createDebug('blockmirror:nbd');

/** What {@link VolumeOpObserver} is told about one operation. */
export interface VolumeOpInfo {
  /** `write` (NBD WRITE), `zero` (TRIM or WRITE_ZEROES) or `flush`. */
  op: 'write' | 'zero' | 'flush';
  /** Volume name. */
  volume: string;
  /** Bytes written or zeroed (0 for flush). */
  bytes: number;
  /** Time from the call to the moment the volume's mode said the operation is done, in seconds. */
  seconds: number;
  /** The volume's answer; absent when the operation failed (`error` is set). */
  result?: WriteResult;
  /** Why the operation failed locally (the NBD client gets an error reply). */
  error?: unknown;
}

/** Called once per completed (or failed) write, zero or flush. Must not throw (a throw is logged and ignored). */
export type VolumeOpObserver = (info: VolumeOpInfo) => void;

/** Options of {@link primaryVolumeBackend}. */
export interface PrimaryVolumeBackendOptions {
  /**
   * Observes every write, zero and flush with its latency (the time until the
   * NBD reply may be sent). Used to feed a write-latency histogram.
   */
  observer?: VolumeOpObserver;
  /** Time source for the latency (default {@link systemClock}). */
  clock?: Clock;
  /**
   * Hand each write's payload over to the volume (`transfer` of
   * {@link PrimaryVolume.write}; default true): the NBD server never reuses
   * a payload buffer, so an async volume keeps it without copying.
   */
  transfer?: boolean;
}

/**
 * Serves a primary's volume over NBD.
 *
 * - `read`, `readInto` → `volume.read`, `volume.readInto` (the local device).
 * - `write` → `volume.write(offset, data, { fua })`: the promise (and so the
 *   NBD reply) settles when the volume's mode says the write is done — sync:
 *   written locally and acknowledged by the mirror; async: written locally.
 * - `trim` and `writeZeroes` → `volume.zero` (ordered and mirrored like a
 *   write; the range reads as zeroes afterwards on both sides). `NO_HOLE` is
 *   accepted: the volume may trim or write zeroes, either way the data is zero.
 * - `flush` → `volume.flush()` (sync mode: the mirror flushes too).
 * - `blockStatus` (NBD `base:allocation`) → the local device's, when it
 *   knows its allocation (`supports.allocation`).
 *
 * **Sync mode and a failing mirror.** When a sync write reaches the local
 * device but the mirror cannot confirm it (link down, mirror write error,
 * mirror timeout), the volume resolves with `mirror: 'failed'` and keeps the
 * request queued (it is retried until the mirror has it; the volume reports
 * `lagging`). The data is on the primary, so the NBD reply is **success**:
 * the client's write did happen; replication catches up later. Only a local
 * failure (the primary's device refused the write, or the volume is closed)
 * becomes an NBD error reply. Watch the volume state (status endpoint,
 * `volume-state` events) to learn that the mirror is behind.
 *
 * `supports.fua` follows the local device: when the device cannot honour
 * FUA, the NBD server follows a FUA request with a `flush`.
 */
export function primaryVolumeBackend(volume: PrimaryVolume, options: PrimaryVolumeBackendOptions = {}): NbdBackend {
  const name = volume.name;
  const settle = settler(name, options, (op, result) => {
    if (result.mirror === 'failed') {
      // Done locally; the mirror catches up (see the documentation above).
      log('volume %s: %s done locally, mirror failed (%s): replying success, the volume lags', name, op, result.error?.code);
    }
  });
  return {
    get size() {
      return volume.size;
    },
    get blockSize() {
      return volume.blockSize;
    },
    supports: { fua: volume.device.supports.fua },
    read: (offset, length) => volume.read(offset, length),
    // (into the server's buffers only where the device reads into them itself, without a copy)
    ...(volume.device.readInto === undefined ? {} : { readInto: (offset: number, target: Uint8Array) => volume.readInto(offset, target) }),
    // the server hands each request's payload over: nothing reuses it
    write: (offset, data, opts) => settle('write', data.length, () => volume.write(offset, data, { fua: opts?.fua === true, transfer: options.transfer !== false })),
    flush: () => settle('flush', 0, () => volume.flush()),
    trim: (offset, length) => settle('zero', length, () => volume.zero(offset, length)),
    writeZeroes: (offset: number, length: number, opts?: NbdWriteZeroesOptions) =>
      settle('zero', length, () => volume.zero(offset, length, { fua: opts?.fua === true })),
    ...allocationOf(volume.device),
  };
}

/** `blockStatus` of a device that knows its allocation (reads of these backends come from that device). */
function allocationOf(device: BlockDevice): Pick<NbdBackend, 'blockStatus'> {
  const blockStatus = device.blockStatus?.bind(device);
  return device.supports.allocation === true && blockStatus !== undefined ? { blockStatus } : {};
}

/**
 * Serves a volume replicated by freeze/copy cycles (a `LayeredVolume`, or any
 * {@link BlockDevice}) over NBD: every operation goes to the device and is done
 * when the device says so; the next cycle ships it. The observer sees each
 * write, trim and flush with `result.mirror: 'queued'`.
 */
export function cycleVolumeBackend(name: string, volume: BlockDevice, options: PrimaryVolumeBackendOptions = {}): NbdBackend {
  const settle = settler(name, options);
  const queued = (run: () => Promise<void>) => async (): Promise<WriteResult> => {
    await run();
    return { mirror: 'queued' };
  };
  const backend: NbdBackend = {
    get size() {
      return volume.size;
    },
    get blockSize() {
      return volume.blockSize;
    },
    supports: { fua: volume.supports.fua },
    read: (offset, length) => volume.read(offset, length),
    ...(volume.readInto === undefined ? {} : { readInto: (offset: number, target: Uint8Array) => volume.readInto!(offset, target) }),
    write: (offset, data, opts) => settle('write', data.length, queued(() => volume.write(offset, data, { fua: opts?.fua === true }))),
    flush: () => settle('flush', 0, queued(() => volume.flush())),
  };
  const trim = volume.trim?.bind(volume);
  if (volume.supports.trim && trim !== undefined) backend.trim = (offset, length) => settle('zero', length, queued(() => trim(offset, length)));
  return backend;
}

/** Runs an operation and tells the observer its latency and outcome. */
function settler(
  name: string,
  options: PrimaryVolumeBackendOptions,
  onResult?: (op: VolumeOpInfo['op'], result: WriteResult) => void,
): (op: VolumeOpInfo['op'], bytes: number, run: () => Promise<WriteResult>) => Promise<void> {
  const observer = options.observer;
  const clock = options.clock ?? systemClock;
  const notify = (info: VolumeOpInfo): void => {
    if (observer === undefined) return;
    try {
      observer(info);
    } catch (error) {
      log('volume %s: observer threw: %O', name, error);
    }
  };
  return async (op, bytes, run) => {
    const started = clock.now();
    let result: WriteResult;
    try {
      result = await run();
    } catch (error) {
      notify({ op, volume: name, bytes, seconds: (clock.now() - started) / 1000, error });
      throw error;
    }
    onResult?.(op, result);
    notify({ op, volume: name, bytes, seconds: (clock.now() - started) / 1000, result });
  };
}

/**
 * Serves a mirror target's volume over NBD, read-only: export it with
 * `readOnly: true` (the server then answers writes, trims and write-zeroes
 * with `EPERM` without calling the backend). Should a write reach the
 * backend anyway, it is refused with `BM_ERR_READ_ONLY` (→ `EPERM`).
 * `flush` does nothing (nothing is written through this backend). Reads see
 * the mirror image as the target applied it so far (no `blockStatus`: a
 * freeze/copy cycle may be merging into the device, and the allocation map is
 * not ordered with that merge).
 */
export function targetVolumeBackend(volume: TargetVolume): NbdBackend {
  const readOnly = (): Promise<never> =>
    Promise.reject(new BlockMirrorError('BM_ERR_READ_ONLY', `volume ${volume.name} is a mirror target: only its primary writes it`));
  return {
    get size() {
      return volume.size;
    },
    get blockSize() {
      return volume.blockSize;
    },
    read: (offset, length) => volume.read(offset, length),
    write: readOnly,
    flush: () => Promise.resolve(),
  };
}
