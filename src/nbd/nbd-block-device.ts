/**
 * {@link NbdBlockDevice}: a {@link BlockDevice} on an export of any NBD
 * server (nbdkit, qemu-nbd, qemu-storage-daemon, rbd-nbd, blockmirror's own
 * `NbdServer`), so a volume can live in a qcow2 image, on Ceph RBD or on S3.
 *
 * @module
 */
import net from 'node:net';
import createDebug from 'debug';
import { EventEmitter } from 'eventemitter3';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { BlockDevice, BlockDeviceSupports, BlockExtent, WriteOptions } from '../device/block-device.js';
import { ExtentBuilder } from '../device/extents.js';
import { checkRange, checkWriteData, MAX_BLOCK_SIZE } from '../device/range.js';
import { ZERO_CHUNK, zeroBuffer } from '../device/zero.js';
import { BlockMirrorError, invalidArgument, toBlockMirrorError } from '../errors.js';
import { negotiate, type NbdNegotiated } from './client-handshake.js';
import { NbdClientConnection, type NbdCommand, type RawExtent } from './client-connection.js';
import {
  commandName,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from './protocol.js';
import { formatNbdUri, parseNbdUri, type NbdTarget } from './uri.js';

const log = createDebug('blockmirror:nbd-device');

const DEFAULT_MAX_REQUEST = 32 * 1024 * 1024;
const DEFAULT_MAX_IN_FLIGHT = 16;
const DEFAULT_CONNECT_TIMEOUT = 10_000;
const DEFAULT_CLOSE_TIMEOUT = 5_000;
const DEFAULT_RECONNECT_MIN = 100;
const DEFAULT_RECONNECT_MAX = 5_000;
const MAX_CONNECTIONS = 16;
/** Largest effect length of one WRITE_ZEROES or BLOCK_STATUS request (the field has 32 bits). */
const MAX_EFFECT_LENGTH = 2 ** 30;
/** Transmission flags a reconnection must repeat: the device's behaviour depends on them. */
const STABLE_FLAGS = NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_WRITE_ZEROES;

/** Options of {@link NbdBlockDevice.open}. */
export interface NbdBlockDeviceOptions {
  /**
   * Alignment unit of the device (power of two, 1 … 65536); at least the
   * server's minimum block size. Default: the larger of 512 and the server's
   * minimum. The export size must be a multiple of it.
   */
  blockSize?: number;
  /** Expected export size in bytes: a different size is refused with `BM_ERR_VOLUME_MISMATCH`. */
  size?: number;
  /**
   * Connections to open (1 … 16). More than one only when the server
   * advertises `NBD_FLAG_CAN_MULTI_CONN` (a flush on one then covers the
   * writes of all); otherwise one. Default 1.
   */
  connections?: number;
  /** Requests in flight per connection (1 … 1024); more wait in a queue. Default 16. */
  maxInFlight?: number;
  /**
   * Largest READ or WRITE request sent, in bytes (at least the block size);
   * lowered to the server's maximum payload. Longer requests are split.
   * Default 32 MiB.
   */
  maxRequestSize?: number;
  /** Milliseconds for connecting and the handshake. Default 10 000. */
  connectTimeout?: number;
  /** Backoff between reconnection attempts: from `min` ms, doubling, up to `max` ms. Default 100 … 5 000. */
  reconnectDelay?: { min?: number; max?: number };
  /** Milliseconds `close()` lets requests in flight finish before it cuts the connections. Default 5 000. */
  closeTimeout?: number;
  /**
   * Milliseconds a request may wait for the server's reply (0: no limit).
   * When it passes, the request rejects with `BM_ERR_TIMEOUT` (a local device
   * error: it may have been applied in part), the connection it was sent on
   * is reset (its other requests reject with `BM_ERR_DEVICE_UNAVAILABLE`) and
   * reconnected with backoff. Default 0.
   */
  requestTimeout?: number;
  /** Negotiate structured replies (default true; false forces simple replies and disables `blockStatus`). */
  structuredReplies?: boolean;
  /** Ask for the `base:allocation` metadata context, for {@link NbdBlockDevice.blockStatus} (default true). */
  allocation?: boolean;
  /** Time source of timeouts and backoff. Default {@link systemClock}. */
  clock?: Clock;
}

/** Options of {@link NbdBlockDevice.writeZeroes}. */
export interface NbdZeroOptions {
  /** Durable when the promise resolves. */
  fua?: boolean;
  /** Keep the range allocated (`NBD_CMD_FLAG_NO_HOLE`); default: the server may punch a hole. */
  noHole?: boolean;
}

/** Events of an {@link NbdBlockDevice}. */
export interface NbdBlockDeviceEvents {
  /** The last connection to the server broke: requests fail with `BM_ERR_DEVICE_UNAVAILABLE` until `reconnect`. */
  disconnect: [error: BlockMirrorError];
  /** A connection is up again after a `disconnect`. */
  reconnect: [];
  /** A connection broke, or an attempt to (re)connect failed (it is retried with backoff). */
  'connection-error': [error: BlockMirrorError];
}

interface Settings {
  readonly target: NbdTarget;
  readonly maxInFlight: number;
  readonly connectTimeout: number;
  readonly closeTimeout: number;
  readonly requestTimeout: number;
  readonly reconnectMin: number;
  readonly reconnectMax: number;
  readonly structured: boolean;
  readonly allocation: boolean;
  readonly clock: Clock;
}

interface Slot {
  readonly index: number;
  conn: NbdClientConnection | undefined;
  timer: TimerHandle | undefined;
  attempt: number;
  connecting: boolean;
  /** No more reconnections (the server stopped offering multi-conn). */
  retired: boolean;
}

interface Waiter {
  cmd: NbdCommand;
  resolve: (extents: RawExtent[] | undefined) => void;
  reject: (error: BlockMirrorError) => void;
}

function intOption(value: unknown, name: string, def: number, min: number, max: number): number {
  if (value === undefined) return def;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(`NbdBlockDevice: ${name} must be an integer from ${min} to ${max}, got ${String(value)}`, { [name]: value });
  }
  return value;
}

/**
 * A {@link BlockDevice} on an NBD export.
 *
 * - Handshake: fixed newstyle, structured replies, `base:allocation`,
 *   `NBD_OPT_GO` with `NBD_INFO_BLOCK_SIZE` (the server's minimum block size
 *   and maximum payload are honoured); `NBD_OPT_EXPORT_NAME` for servers
 *   without `GO`. TLS is not supported.
 * - Requests: up to `maxInFlight` per connection, answered in any order;
 *   several connections only when the server advertises
 *   `NBD_FLAG_CAN_MULTI_CONN`. READ and WRITE longer than the maximum
 *   request size are split (the parts run concurrently).
 * - `write(…, { fua: true })` uses `NBD_CMD_FLAG_FUA` when the server
 *   offers it, else a write then `NBD_CMD_FLUSH`. `flush()` is
 *   `NBD_CMD_FLUSH` (nothing when the server has no flush: its writes are as
 *   durable as they get). `trim()` and {@link writeZeroes} use
 *   `NBD_CMD_WRITE_ZEROES` (the server may punch holes; NBD's own TRIM is
 *   only a hint, so it is never used for a range that must read as zeroes);
 *   without it, zeroes are written in chunks of at most 1 MiB.
 * - {@link blockStatus}: `NBD_CMD_BLOCK_STATUS` on `base:allocation`, when
 *   the server offers it (`supports.allocation`).
 * - Errors: the server's error replies map to coded errors (`EIO` →
 *   `BM_ERR_IO`, `ENOSPC` → `BM_ERR_NO_SPACE`, `EPERM` →
 *   `BM_ERR_READ_ONLY`, …). When every connection is down, requests fail at
 *   once with `BM_ERR_DEVICE_UNAVAILABLE` (those in flight when a connection
 *   broke too: they may have been applied in part) while the device
 *   reconnects in the background with exponential backoff; a reconnection
 *   must find the same export (size, read-only, flush/FUA/zero flags,
 *   allocation context), else it is refused and retried.
 * - Durability across a lost connection: if writes had completed since the
 *   last flush when a connection broke, the server may have lost them from
 *   its cache (it may have restarted), so the next `flush()` rejects with
 *   `BM_ERR_IO` once — a flush never reports more than is true.
 *
 * `supports`: `trim` yes (zeroes), `flush` when the server advertises
 * `NBD_FLAG_SEND_FLUSH`, `fua` when it advertises FUA or flush, `reopen` yes
 * (the content lives in the server), `allocation` when `base:allocation`
 * was negotiated.
 */
export class NbdBlockDevice extends EventEmitter<NbdBlockDeviceEvents> implements BlockDevice {
  /** Where the export is. */
  readonly target: NbdTarget;
  /** The export's URI (`nbd://…` or `nbd+unix://…`). */
  readonly uri: string;
  /** Export size in bytes. */
  readonly size: number;
  /** Alignment unit in bytes. */
  readonly blockSize: number;
  /** The server's preferred block size (4096 when it did not say). */
  readonly preferredBlockSize: number;
  /** Largest READ/WRITE request sent (a multiple of `blockSize`). */
  readonly maxRequestSize: number;
  /** The export is read-only: writes, trims and zeroes reject with `BM_ERR_READ_ONLY`. */
  readonly readOnly: boolean;
  /** Capabilities (see the class description). */
  readonly supports: BlockDeviceSupports;
  /** Transmission flags the server advertised (`NBD_FLAG_*`). */
  readonly transmissionFlags: number;

  readonly #settings: Settings;
  readonly #slots: Slot[] = [];
  readonly #queue: Waiter[] = [];
  readonly #structured: boolean;
  readonly #allocation: boolean;
  #closed = false;
  #closing: Promise<void> | undefined;
  #available = true;
  #lastError: BlockMirrorError | undefined;
  /** Writes completed (counter), covered by a completed flush, possibly lost with a broken connection. */
  #writesDone = 0;
  #flushedUpTo = 0;
  #lostUpTo = 0;

  private constructor(settings: Settings, first: NbdClientConnection, geometry: { size: number; blockSize: number; preferred: number; maxRequest: number }) {
    super();
    this.#settings = settings;
    this.target = settings.target;
    this.uri = formatNbdUri(settings.target);
    const n = first.negotiated;
    this.size = geometry.size;
    this.blockSize = geometry.blockSize;
    this.preferredBlockSize = geometry.preferred;
    this.maxRequestSize = geometry.maxRequest;
    this.transmissionFlags = n.flags;
    this.readOnly = (n.flags & NBD_FLAG_READ_ONLY) !== 0;
    this.#structured = n.structured;
    this.#allocation = n.allocationContext !== undefined;
    const flush = (n.flags & NBD_FLAG_SEND_FLUSH) !== 0;
    this.supports = Object.freeze({
      trim: true,
      flush,
      fua: flush || (n.flags & NBD_FLAG_SEND_FUA) !== 0,
      reopen: true,
      allocation: this.#allocation,
    });
  }

  /**
   * Connects to an export and returns the device once the first connection is
   * in transmission (extra connections are opened before it resolves; one
   * that fails is retried in the background).
   *
   * @param target - an NBD URI (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`) or its parts.
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` (bad URI or options,
   *   a block size the export cannot honour, a size that is not a multiple of
   *   the block size), `BM_ERR_NOT_SUPPORTED` (TLS), `BM_ERR_CONNECT_FAILED`,
   *   `BM_ERR_HANDSHAKE_TIMEOUT`, `BM_ERR_UNKNOWN_VOLUME` (no such export),
   *   `BM_ERR_VOLUME_MISMATCH` (size differs from `options.size`),
   *   `BM_ERR_PROTOCOL` / `BM_ERR_BAD_MAGIC` (not a proper NBD server).
   */
  static async open(target: string | NbdTarget, options: NbdBlockDeviceOptions = {}): Promise<NbdBlockDevice> {
    const t = typeof target === 'string' ? parseNbdUri(target) : checkTarget(target);
    if (options === null || typeof options !== 'object') throw invalidArgument('NbdBlockDevice: options must be an object');
    const delay = options.reconnectDelay ?? {};
    const reconnectMin = intOption(delay.min, 'reconnectDelay.min', DEFAULT_RECONNECT_MIN, 1, 2 ** 31 - 1);
    const settings: Settings = {
      target: t,
      maxInFlight: intOption(options.maxInFlight, 'maxInFlight', DEFAULT_MAX_IN_FLIGHT, 1, 1024),
      connectTimeout: intOption(options.connectTimeout, 'connectTimeout', DEFAULT_CONNECT_TIMEOUT, 1, 2 ** 31 - 1),
      closeTimeout: intOption(options.closeTimeout, 'closeTimeout', DEFAULT_CLOSE_TIMEOUT, 0, 2 ** 31 - 1),
      requestTimeout: intOption(options.requestTimeout, 'requestTimeout', 0, 0, 2 ** 31 - 1),
      reconnectMin,
      reconnectMax: intOption(delay.max, 'reconnectDelay.max', Math.max(reconnectMin, DEFAULT_RECONNECT_MAX), reconnectMin, 2 ** 31 - 1),
      structured: options.structuredReplies !== false,
      allocation: options.allocation !== false,
      clock: options.clock ?? systemClock,
    };
    const connections = intOption(options.connections, 'connections', 1, 1, MAX_CONNECTIONS);
    const maxRequestOption = intOption(options.maxRequestSize, 'maxRequestSize', DEFAULT_MAX_REQUEST, 1, 2 ** 31);
    if (options.blockSize !== undefined) intOption(options.blockSize, 'blockSize', 512, 1, MAX_BLOCK_SIZE);
    if (options.size !== undefined) intOption(options.size, 'size', 0, 0, Number.MAX_SAFE_INTEGER);

    const first = await connect(settings);
    let device: NbdBlockDevice;
    try {
      const geometry = geometryOf(first.negotiated, options, maxRequestOption, formatNbdUri(t));
      device = new NbdBlockDevice(settings, first, geometry);
    } catch (error) {
      first.destroy(new BlockMirrorError('BM_ERR_CLOSED', 'NBD device refused at open'));
      throw error;
    }
    const count = (first.negotiated.flags & NBD_FLAG_CAN_MULTI_CONN) !== 0 ? connections : 1;
    for (let i = 0; i < count; i++) {
      device.#slots.push({ index: i, conn: undefined, timer: undefined, attempt: 0, connecting: false, retired: false });
    }
    device.#attach(device.#slots[0]!, first);
    await Promise.all(device.#slots.slice(1).map((slot) => device.#reconnect(slot)));
    log('%s: size %d, block size %d, max request %d, flags 0x%s, %d connection(s)', device.uri, device.size, device.blockSize, device.maxRequestSize, first.negotiated.flags.toString(16), device.connections);
    return device;
  }

  /** Connections in transmission now. */
  get connections(): number {
    return this.#slots.filter((s) => s.conn?.alive === true).length;
  }

  /** True while at least one connection is up (requests can be served). */
  get connected(): boolean {
    return !this.#closed && this.connections > 0;
  }

  /** Reads `length` bytes at `offset` (split at {@link maxRequestSize}). */
  read(offset: number, length: number): Promise<Buffer> {
    try {
      this.#checkOpen();
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    // Structured replies may come in several chunks: start from zeroes, never from old memory.
    const out = this.#structured ? Buffer.alloc(length) : Buffer.allocUnsafe(length);
    if (length === 0) return Promise.resolve(out);
    return this.#readInto(offset, out, out);
  }

  /** Reads `target.length` bytes at `offset` into `target` (see {@link BlockDevice.readInto}). */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    try {
      this.#checkOpen();
      checkRange(this, offset, target.length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (target.length === 0) return Promise.resolve();
    // Structured replies may come in several chunks: start from zeroes, never from old memory.
    if (this.#structured) target.fill(0);
    return this.#readInto(offset, target, undefined);
  }

  /** Fills `target` from `offset` (split at {@link maxRequestSize}), then resolves with `result`. */
  #readInto<T>(offset: number, target: Uint8Array, result: T): Promise<T> {
    const out = Buffer.isBuffer(target) ? target : Buffer.from(target.buffer, target.byteOffset, target.byteLength);
    const length = out.length;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; pos += this.maxRequestSize) {
      const n = Math.min(this.maxRequestSize, length - pos);
      parts.push(this.#submit({ type: NBD_CMD_READ, flags: 0, offset: offset + pos, length: n, target: out.subarray(pos, pos + n) }));
    }
    return Promise.all(parts).then(() => result);
  }

  /** Writes `data` at `offset` (split at {@link maxRequestSize}); `fua` as the server allows (see the class description). */
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    let length: number;
    try {
      this.#checkOpen();
      length = checkWriteData(data);
      checkRange(this, offset, length);
      this.#checkWritable('write', offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve();
    const fua = options?.fua === true;
    const nativeFua = fua && (this.transmissionFlags & NBD_FLAG_SEND_FUA) !== 0;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; pos += this.maxRequestSize) {
      const n = Math.min(this.maxRequestSize, length - pos);
      const payload = data.subarray(pos, pos + n);
      parts.push(this.#submit({ type: NBD_CMD_WRITE, flags: nativeFua ? NBD_CMD_FLAG_FUA : 0, offset: offset + pos, length: n, payload }));
    }
    return this.#afterWrite(Promise.all(parts), fua, nativeFua);
  }

  /**
   * Makes every write completed before the call durable (`NBD_CMD_FLUSH`).
   *
   * @throws {BlockMirrorError} `BM_ERR_IO` once after a connection broke while
   *   completed writes were not yet flushed (they may be lost);
   *   `BM_ERR_DEVICE_UNAVAILABLE` while disconnected.
   */
  flush(): Promise<void> {
    try {
      this.#checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    if (!this.supports.flush) return Promise.resolve();
    if (this.connections === 0) return Promise.reject(this.#unavailable());
    if (this.#lostUpTo > this.#flushedUpTo) {
      this.#flushedUpTo = this.#lostUpTo;
      return Promise.reject(
        new BlockMirrorError(
          'BM_ERR_IO',
          `NBD device ${this.uri}: a connection to the server broke while completed writes were not flushed; they may be lost (the server may have restarted)`,
          { details: { uri: this.uri } },
        ),
      );
    }
    const mark = this.#writesDone;
    return this.#submit({ type: NBD_CMD_FLUSH, flags: 0, offset: 0, length: 0 }).then(() => {
      if (mark > this.#flushedUpTo) this.#flushedUpTo = mark;
    });
  }

  /** Zeroes a range; the server may punch holes (reads return zeroes afterwards). */
  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  /**
   * Zeroes a range with `NBD_CMD_WRITE_ZEROES` (in parts of at most 1 GiB),
   * or by writing zeroes when the server lacks it.
   */
  writeZeroes(offset: number, length: number, options: NbdZeroOptions = {}): Promise<void> {
    try {
      this.#checkOpen();
      checkRange(this, offset, length);
      this.#checkWritable('writeZeroes', offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve();
    const fua = options.fua === true;
    const nativeFua = fua && (this.transmissionFlags & NBD_FLAG_SEND_FUA) !== 0;
    const parts: Promise<unknown>[] = [];
    if ((this.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0) {
      const step = alignDown(MAX_EFFECT_LENGTH, this.blockSize);
      const flags = (nativeFua ? NBD_CMD_FLAG_FUA : 0) | (options.noHole === true ? NBD_CMD_FLAG_NO_HOLE : 0);
      for (let pos = 0; pos < length; pos += step) {
        parts.push(this.#submit({ type: NBD_CMD_WRITE_ZEROES, flags, offset: offset + pos, length: Math.min(step, length - pos) }));
      }
    } else {
      const zero = zeroBuffer();
      const step = Math.min(this.maxRequestSize, alignDown(ZERO_CHUNK, this.blockSize));
      for (let pos = 0; pos < length; pos += step) {
        const n = Math.min(step, length - pos);
        parts.push(this.#submit({ type: NBD_CMD_WRITE, flags: nativeFua ? NBD_CMD_FLAG_FUA : 0, offset: offset + pos, length: n, payload: zero.subarray(0, n) }));
      }
    }
    return this.#afterWrite(Promise.all(parts), fua, nativeFua);
  }

  /**
   * The allocation status of a range from the server's `base:allocation`
   * context (`NBD_STATE_ZERO` → `zero`, `NBD_STATE_HOLE` → `hole`); a block
   * the server describes in pieces is `zero`/`hole` only if every piece is.
   *
   * @throws {BlockMirrorError} `BM_ERR_NOT_SUPPORTED` when `supports.allocation` is false.
   */
  async blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    this.#checkOpen();
    checkRange(this, offset, length);
    if (!this.#allocation) {
      throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `NBD device ${this.uri}: the server offers no base:allocation context`, { details: { uri: this.uri } });
    }
    const bs = this.blockSize;
    const end = offset + length;
    const map = new ExtentBuilder(offset, bs);
    const step = alignDown(MAX_EFFECT_LENGTH, bs);
    while (map.end < end) {
      const pos = map.end;
      const extents = await this.#submit({ type: NBD_CMD_BLOCK_STATUS, flags: 0, offset: pos, length: Math.min(step, end - pos) });
      for (const e of extents ?? []) {
        const n = Math.min(e.length, end - map.end);
        map.push(n, (e.flags & NBD_STATE_ZERO) !== 0, (e.flags & NBD_STATE_HOLE) !== 0);
        if (map.end >= end) break;
      }
      // the reply ended inside a block: the rest of that block is unknown, so "data"
      const inBlock = map.end % bs;
      if (inBlock !== 0) map.push(bs - inBlock, false, false);
    }
    return map.extents(end);
  }

  /**
   * Lets requests in flight finish (at most `closeTimeout`), then sends
   * `NBD_CMD_DISC` and closes every connection. Queued requests reject with
   * `BM_ERR_CLOSED`. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    const { clock } = this.#settings;
    const closed = new BlockMirrorError('BM_ERR_CLOSED', `NBD device ${this.uri} is closed`);
    for (const w of this.#queue.splice(0)) w.reject(closed);
    await Promise.all(
      this.#slots.map(async (slot) => {
        if (slot.timer !== undefined) clock.clearTimeout(slot.timer);
        slot.timer = undefined;
        const conn = slot.conn;
        if (conn === undefined || !conn.alive) return;
        let timer: TimerHandle | undefined;
        const timedOut = new Promise<'timeout'>((resolve) => {
          timer = clock.setTimeout(() => resolve('timeout'), this.#settings.closeTimeout);
        });
        if (conn.inFlight > 0) {
          const idle = new Promise<'idle'>((resolve) => {
            conn.once('idle', () => resolve('idle'));
            conn.once('close', () => resolve('idle'));
          });
          if ((await Promise.race([idle, timedOut])) === 'timeout') conn.destroy(closed);
        }
        conn.disconnect();
        if ((await Promise.race([conn.closed.then(() => 'closed' as const), timedOut])) === 'timeout') conn.destroy(closed);
        clock.clearTimeout(timer);
      }),
    );
    log('%s: closed', this.uri);
  }

  // ------------------------------------------------------------ internals

  #checkOpen(): void {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', `NBD device ${this.uri} is closed`);
  }

  #checkWritable(op: string, offset: number, length: number): void {
    if (this.readOnly) {
      throw new BlockMirrorError('BM_ERR_READ_ONLY', `NBD export ${this.uri} is read-only`, { details: { op, offset, length, uri: this.uri } });
    }
  }

  #unavailable(): BlockMirrorError {
    const why = this.#lastError === undefined ? '' : ` (${this.#lastError.message})`;
    return new BlockMirrorError('BM_ERR_DEVICE_UNAVAILABLE', `NBD device ${this.uri}: not connected to the server, reconnecting${why}`, {
      details: { uri: this.uri },
    });
  }

  /** Emulates FUA with a flush when the server has no FUA. */
  async #afterWrite(done: Promise<unknown>, fua: boolean, nativeFua: boolean): Promise<void> {
    await done;
    if (fua && !nativeFua && this.supports.flush) await this.flush();
  }

  /** Sends `cmd` on the least busy connection, queues it when all are at `maxInFlight`, fails it when none is up. */
  #submit(cmd: NbdCommand): Promise<RawExtent[] | undefined> {
    if (this.#closed) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', `NBD device ${this.uri} is closed`));
    const conn = this.#pick();
    if (conn !== undefined) return this.#sendOn(conn, cmd);
    if (this.connections === 0) return Promise.reject(this.#unavailable());
    return new Promise((resolve, reject) => this.#queue.push({ cmd, resolve, reject }));
  }

  #sendOn(conn: NbdClientConnection, cmd: NbdCommand): Promise<RawExtent[] | undefined> {
    const timeout = this.#settings.requestTimeout;
    const p = timeout > 0 ? this.#timed(conn, cmd, conn.send(cmd), timeout) : conn.send(cmd);
    // every completed write the server may still hold in a volatile cache counts for the flush-after-loss rule
    const volatile = (cmd.type === NBD_CMD_WRITE || cmd.type === NBD_CMD_WRITE_ZEROES) && (cmd.flags & NBD_CMD_FLAG_FUA) === 0;
    p.then(
      () => {
        if (volatile) this.#writesDone++;
        this.#pump();
      },
      () => this.#pump(),
    );
    return p;
  }

  /** `sent`, or a `BM_ERR_TIMEOUT` rejection once `ms` pass without a reply (the connection is then reset). */
  #timed(conn: NbdClientConnection, cmd: NbdCommand, sent: Promise<RawExtent[] | undefined>, ms: number): Promise<RawExtent[] | undefined> {
    const clock = this.#settings.clock;
    return new Promise((resolve, reject) => {
      const timer = clock.setTimeout(() => {
        const op = commandName(cmd.type);
        log('%s: %s at %d+%d: no reply within %d ms: resetting the connection', this.uri, op, cmd.offset, cmd.length, ms);
        reject(
          new BlockMirrorError('BM_ERR_TIMEOUT', `NBD ${op} of ${cmd.length} bytes at ${cmd.offset}: no reply from ${this.uri} within ${ms} ms (the request may have been applied in part; the connection is reset)`, {
            details: { op, offset: cmd.offset, length: cmd.length, timeout: ms },
          }),
        );
        conn.destroy(new BlockMirrorError('BM_ERR_DEVICE_UNAVAILABLE', `NBD server ${this.uri}: connection reset after a request got no reply within ${ms} ms`));
      }, ms);
      sent.then(
        (v) => {
          clock.clearTimeout(timer);
          resolve(v);
        },
        (error: unknown) => {
          clock.clearTimeout(timer);
          reject(error as BlockMirrorError);
        },
      );
    });
  }

  #pump(): void {
    while (this.#queue.length > 0) {
      const conn = this.#pick();
      if (conn === undefined) return;
      const w = this.#queue.shift()!;
      this.#sendOn(conn, w.cmd).then(w.resolve, w.reject);
    }
  }

  #pick(): NbdClientConnection | undefined {
    let best: NbdClientConnection | undefined;
    for (const slot of this.#slots) {
      const c = slot.conn;
      if (c === undefined || !c.alive || c.inFlight >= this.#settings.maxInFlight) continue;
      if (best === undefined || c.inFlight < best.inFlight) best = c;
    }
    return best;
  }

  #attach(slot: Slot, conn: NbdClientConnection): void {
    slot.conn = conn;
    slot.attempt = 0;
    conn.once('close', (error) => this.#lost(slot, conn, error));
    if (!this.#available) {
      this.#available = true;
      log('%s: reconnected', this.uri);
      this.emit('reconnect');
    }
    this.#pump();
  }

  #lost(slot: Slot, conn: NbdClientConnection, error: BlockMirrorError): void {
    if (slot.conn === conn) slot.conn = undefined;
    if (this.#closed) return;
    log('%s: connection %d lost: %s', this.uri, slot.index, error.message);
    this.#lastError = error;
    // writes the server acknowledged but nobody flushed may be gone with it
    if (this.#writesDone > this.#flushedUpTo) this.#lostUpTo = this.#writesDone;
    this.emit('connection-error', error);
    if (this.connections === 0 && this.#available) {
      this.#available = false;
      const unavailable = this.#unavailable();
      for (const w of this.#queue.splice(0)) w.reject(unavailable);
      this.emit('disconnect', error);
    }
    this.#schedule(slot);
  }

  #schedule(slot: Slot): void {
    if (this.#closed || slot.retired || slot.timer !== undefined || slot.connecting) return;
    const { reconnectMin, reconnectMax, clock } = this.#settings;
    const delay = Math.min(reconnectMax, reconnectMin * 2 ** Math.min(slot.attempt, 30));
    slot.attempt++;
    slot.timer = clock.setTimeout(() => {
      slot.timer = undefined;
      void this.#reconnect(slot);
    }, delay);
  }

  async #reconnect(slot: Slot): Promise<void> {
    if (this.#closed || slot.connecting) return;
    slot.connecting = true;
    let conn: NbdClientConnection | undefined;
    try {
      conn = await connect(this.#settings);
      this.#checkSameExport(conn.negotiated, slot);
    } catch (error) {
      conn?.destroy(new BlockMirrorError('BM_ERR_CLOSED', 'refused reconnection'));
      conn = undefined;
      const err = toBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED');
      this.#lastError = err;
      log('%s: connection %d: %s', this.uri, slot.index, err.message);
      if (!this.#closed) this.emit('connection-error', err);
    } finally {
      slot.connecting = false;
    }
    if (this.#closed) {
      conn?.disconnect();
      return;
    }
    if (conn === undefined) {
      this.#schedule(slot);
      return;
    }
    this.#attach(slot, conn);
  }

  /** A new connection must serve the export the device was opened on. */
  #checkSameExport(n: NbdNegotiated, slot: Slot): void {
    const mismatch = (why: string): BlockMirrorError =>
      new BlockMirrorError('BM_ERR_VOLUME_MISMATCH', `NBD device ${this.uri}: the export changed (${why}); not using this connection`, {
        details: { uri: this.uri },
      });
    if (n.size !== this.size) throw mismatch(`size ${n.size}, was ${this.size}`);
    if ((n.flags & STABLE_FLAGS) !== (this.transmissionFlags & STABLE_FLAGS)) {
      throw mismatch(`flags 0x${n.flags.toString(16)}, were 0x${this.transmissionFlags.toString(16)}`);
    }
    if ((n.blockSizes?.minimum ?? 1) > this.blockSize) throw mismatch(`minimum block size ${n.blockSizes?.minimum ?? 1}`);
    if (n.blockSizes !== undefined && n.blockSizes.maximum < this.maxRequestSize) throw mismatch(`maximum payload ${n.blockSizes.maximum}`);
    if (n.structured !== this.#structured || (n.allocationContext !== undefined) !== this.#allocation) {
      throw mismatch('structured replies or base:allocation changed');
    }
    if (slot.index > 0 && (n.flags & NBD_FLAG_CAN_MULTI_CONN) === 0) {
      slot.retired = true;
      throw mismatch('no multi-conn any more: extra connection retired');
    }
  }
}

function alignDown(n: number, bs: number): number {
  return n - (n % bs);
}

function checkTarget(target: NbdTarget): NbdTarget {
  if (target === null || typeof target !== 'object') throw invalidArgument('NbdBlockDevice: target must be an NBD URI or { host, port | socket, exportName }');
  const exportName = target.exportName ?? '';
  if (typeof exportName !== 'string') throw invalidArgument('NbdBlockDevice: exportName must be a string');
  if (typeof target.socket === 'string' && target.socket !== '') return Object.freeze({ socket: target.socket, exportName });
  const { host, port } = target;
  if (typeof host !== 'string' || host === '') throw invalidArgument('NbdBlockDevice: target needs a host (or a socket)');
  intOption(port, 'port', 0, 1, 65535);
  return Object.freeze({ host, port: port!, exportName });
}

/** Block size, size and request size of the device from what the server said. */
function geometryOf(
  n: NbdNegotiated,
  options: NbdBlockDeviceOptions,
  maxRequestOption: number,
  uri: string,
): { size: number; blockSize: number; preferred: number; maxRequest: number } {
  const minimum = n.blockSizes?.minimum ?? 1;
  const blockSize = options.blockSize ?? Math.max(512, minimum);
  const details = { uri, size: n.size, blockSize, serverMinimum: minimum };
  if (blockSize < minimum) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `NBD export ${uri} needs requests aligned to ${minimum} bytes; blockSize ${blockSize} is smaller`, { details });
  }
  if (n.size % blockSize !== 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `NBD export ${uri} has a size of ${n.size} bytes, not a multiple of the block size ${blockSize}`, { details });
  }
  if (options.size !== undefined && options.size !== n.size) {
    throw new BlockMirrorError('BM_ERR_VOLUME_MISMATCH', `NBD export ${uri} has ${n.size} bytes, expected ${options.size}`, { details });
  }
  const serverMax = n.blockSizes === undefined || n.blockSizes.maximum === 0xffffffff ? DEFAULT_MAX_REQUEST : n.blockSizes.maximum;
  const maxRequest = alignDown(Math.min(serverMax, maxRequestOption), blockSize);
  if (maxRequest < blockSize) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `NBD export ${uri}: a request of one block (${blockSize} bytes) exceeds the maximum request size ${Math.min(serverMax, maxRequestOption)}`, {
      details,
    });
  }
  return { size: n.size, blockSize, preferred: n.blockSizes?.preferred ?? 4096, maxRequest };
}

/** Opens one connection and runs the handshake, within `connectTimeout`. */
async function connect(settings: Settings): Promise<NbdClientConnection> {
  const { target, clock } = settings;
  const socket = target.socket !== undefined ? net.connect({ path: target.socket }) : net.connect({ host: target.host, port: target.port });
  // errors are reported through the close that follows
  socket.on('error', () => undefined);
  let timedOut = false;
  const timer = clock.setTimeout(() => {
    timedOut = true;
    socket.destroy();
  }, settings.connectTimeout);
  try {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        socket.off('connect', onConnect);
        reject(err);
      };
      const onClose = (): void => reject(new Error('connection closed before it was established'));
      const onConnect = (): void => {
        socket.off('error', onError);
        socket.off('close', onClose);
        resolve();
      };
      socket.once('error', onError);
      socket.once('close', onClose);
      socket.once('connect', onConnect);
    }).catch((error: unknown) => {
      if (timedOut) throw timeoutError(settings);
      const err = toBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED');
      throw new BlockMirrorError(err.code, `cannot connect to the NBD server ${formatNbdUri(target)}: ${err.message}`, { cause: error, details: { uri: formatNbdUri(target) } });
    });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    let negotiated: NbdNegotiated;
    try {
      negotiated = await negotiate(socket, target.exportName, { structured: settings.structured, allocation: settings.allocation });
    } catch (error) {
      if (timedOut) throw timeoutError(settings);
      throw error;
    }
    return new NbdClientConnection(socket, negotiated);
  } catch (error) {
    socket.destroy();
    throw error;
  } finally {
    clock.clearTimeout(timer);
  }
}

function timeoutError(settings: Settings): BlockMirrorError {
  const uri = formatNbdUri(settings.target);
  return new BlockMirrorError('BM_ERR_HANDSHAKE_TIMEOUT', `the NBD server ${uri} did not complete the handshake within ${settings.connectTimeout} ms`, {
    details: { uri, timeout: settings.connectTimeout },
  });
}
