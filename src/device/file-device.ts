/**
 * A {@link BlockDevice} backed by a regular file.
 *
 * @module
 */

import { zeroBuffer } from './zero.js';
import fs from 'node:fs';
import { promisify } from 'node:util';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { BlockDevice, BlockDeviceSupports, WriteOptions } from './block-device.js';
import { InlineGate } from './inline-gate.js';
import { checkRange, checkWriteData, validateGeometry } from './range.js';

const log = createDebug('blockmirror:device');

const openAsync = promisify(fs.open);
const fstatAsync = promisify(fs.fstat);
const ftruncateAsync = promisify(fs.ftruncate);
const closeAsync = promisify(fs.close);
const unlinkAsync = promisify(fs.unlink);

const FILE_SUPPORTS: BlockDeviceSupports = Object.freeze({ trim: true, flush: true, fua: true, reopen: true });


/**
 * Inline reads back off when their running mean exceeds this (ms): reads from
 * the page cache take 1–9 µs (4–64 KiB), reads that wait for a fast disk tens
 * of microseconds.
 */
const INLINE_READ_MEAN_LIMIT_MS = 0.025;

/** Options of {@link FileBlockDevice.open}. */
export interface FileBlockDeviceOptions {
  /**
   * Size in bytes. Required to create the file. When the file exists, it must
   * equal the file's size; when omitted, the file's size is used.
   */
  size?: number;
  /** Alignment unit in bytes (power of two, 1 … 65536). Default 512. */
  blockSize?: number;
  /** Create a sparse file of `size` bytes when `path` does not exist. Default true (ignored when `readOnly`). */
  create?: boolean;
  /**
   * Write requests of at most 64 KiB on the event-loop thread (`fs.writeSync`
   * into the page cache) instead of the libuv thread pool: saves a thread
   * hand-off per write (the larger part of the CPU per small write). Adaptive:
   * a write that takes longer than 1 ms (e.g. the kernel throttling dirty
   * pages) switches the device back to the thread pool for the next 1024
   * writes. Default true; set false to never block the event loop on a write.
   */
  inlineWrites?: boolean;
  /**
   * Read requests of at most 64 KiB on the event-loop thread (`fs.readSync`
   * from the page cache) instead of the libuv thread pool: 2.6–2.9× the 4 KiB
   * random-read rate over NBD when the data is cached. Adaptive: a read that
   * takes longer than 1 ms, or inline reads averaging more than 25 µs (reads
   * missing the page cache, which the thread pool overlaps), send the next
   * 1024 reads to the thread pool, then inline reads probe again. Default
   * true; set false to never block the event loop on a read.
   */
  inlineReads?: boolean;
  /** Open read-only: `write()` and `trim()` reject with `BM_ERR_READ_ONLY`. Default false. */
  readOnly?: boolean;
}

type SysError = NodeJS.ErrnoException | null;

/**
 * A {@link BlockDevice} on a regular file, with positional I/O on one file
 * descriptor.
 *
 * - Reads and writes of at most 64 KiB run on the event-loop thread while
 *   they are served by the page cache (see {@link FileBlockDeviceOptions.inlineReads}
 *   and {@link FileBlockDeviceOptions.inlineWrites}); larger ones, and small
 *   ones after a slow spell, run in libuv's thread pool, where concurrent
 *   requests proceed in parallel (up to `UV_THREADPOOL_SIZE`). Requests are
 *   independent: the order of concurrent overlapping requests is not defined.
 * - `write()` writes the caller's buffer without copying it; `read()`
 *   allocates one buffer of exactly `length` bytes. Short reads and writes are
 *   continued until complete.
 * - `flush()` is `fdatasync`; `write(…, { fua: true })` is a write followed by `fdatasync`.
 * - `trim()` writes zeroes (Node.js cannot punch holes), in chunks of at most 1 MiB,
 *   so trimmed ranges read as zero but are allocated on disk.
 * - `close()` refuses new requests at once (`BM_ERR_CLOSED`), then waits for the
 *   requests already in flight to settle before closing the descriptor (so a
 *   request never runs on a closed or reused descriptor). It is idempotent:
 *   every call returns the same promise.
 * - System errors map to coded errors (`EIO` → `BM_ERR_IO`, `ENOSPC` → `BM_ERR_NO_SPACE`, …)
 *   with `details: { op, offset, length, path }` and the system error as `cause`.
 *
 * `supports`: `{ trim: true, flush: true, fua: true, reopen: true }`.
 *
 * Regular files are the intended backing store. A block or character special
 * file (for example `/dev/sdb`) is accepted only with an explicit `size`, which
 * is trusted as given (its size cannot be read with `fstat`).
 */
export class FileBlockDevice implements BlockDevice {
  /** Path of the backing file, as given to {@link FileBlockDevice.open}. */
  readonly path: string;
  /** Size in bytes. */
  readonly size: number;
  /** Alignment unit in bytes. */
  readonly blockSize: number;
  /** True when opened read-only. */
  readonly readOnly: boolean;
  /** `{ trim: true, flush: true, fua: true, reopen: true }`. */
  readonly supports: BlockDeviceSupports = FILE_SUPPORTS;

  readonly #fd: number;
  #closed = false;
  #inFlight = 0;
  /**
   * `fdatasync` calls running: a write meanwhile may wait for the sync for a
   * moment, which the inline gate excuses (else every durability flush sent
   * the next 1,024 writes to the thread pool, and their completions came
   * back one by one).
   */
  #syncing = 0;
  #closing: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;
  /** When small writes run on the event-loop thread. */
  #inlineWrites = new InlineGate(true);
  /** When small reads run on the event-loop thread. */
  #inlineReads = new InlineGate(true, INLINE_READ_MEAN_LIMIT_MS);

  private constructor(path: string, fd: number, size: number, blockSize: number, readOnly: boolean) {
    this.path = path;
    this.#fd = fd;
    this.size = size;
    this.blockSize = blockSize;
    this.readOnly = readOnly;
  }

  /**
   * Opens (and by default creates) a file-backed device.
   *
   * A missing file is created sparse (`ftruncate` to `size`), so a large device
   * takes no disk space until written.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options, a missing file
   *   that may not be created (or without `size`), a file whose size differs from `size`
   *   or is not a multiple of `blockSize`, a path that is neither a regular file nor
   *   (with `size`) a block or character special file;
   *   `BM_ERR_IO` / `BM_ERR_NO_SPACE` for system errors while opening.
   */
  static async open(path: string, options: FileBlockDeviceOptions = {}): Promise<FileBlockDevice> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'path must be a non-empty string', {
        details: { path },
      });
    }
    const blockSize = options.blockSize ?? 512;
    const readOnly = options.readOnly ?? false;
    const create = (options.create ?? true) && !readOnly;
    const { size } = options;
    validateGeometry(size ?? 0, blockSize);

    const { O_RDONLY, O_RDWR, O_CREAT, O_EXCL } = fs.constants;
    let fd: number;
    try {
      fd = await openAsync(path, readOnly ? O_RDONLY : O_RDWR);
    } catch (error) {
      if ((error as SysError)?.code !== 'ENOENT' || !create) throw openError(path, error);
      if (size === undefined) {
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${path} does not exist and no size was given to create it`, {
          details: { path },
        });
      }
      return FileBlockDevice.#create(path, size, blockSize, O_RDWR | O_CREAT | O_EXCL, options);
    }

    try {
      const stat = await fstatAsync(fd);
      if (!stat.isFile()) {
        if (!(stat.isBlockDevice() || stat.isCharacterDevice()) || size === undefined) {
          throw new BlockMirrorError(
            'BM_ERR_INVALID_ARGUMENT',
            `${path} is not a regular file (a block or character special file needs an explicit size)`,
            { details: { path } },
          );
        }
        // fstat cannot tell the size of a special file: the caller vouches for it.
        log('opened special file %s (%d bytes by caller, block %d%s)', path, size, blockSize, readOnly ? ', read-only' : '');
        return FileBlockDevice.#configured(new FileBlockDevice(path, fd, size, blockSize, readOnly), options);
      }
      if (size !== undefined && stat.size !== size) {
        throw new BlockMirrorError(
          'BM_ERR_INVALID_ARGUMENT',
          `${path} exists with size ${stat.size}, not the requested size ${size}; omit size to use the file's size`,
          { details: { path, size, fileSize: stat.size } },
        );
      }
      if (stat.size % blockSize !== 0 || !Number.isSafeInteger(stat.size)) {
        throw new BlockMirrorError(
          'BM_ERR_INVALID_ARGUMENT',
          `${path} has size ${stat.size}, which is not a multiple of blockSize ${blockSize}`,
          { details: { path, fileSize: stat.size, blockSize } },
        );
      }
      log('opened %s (%d bytes, block %d%s)', path, stat.size, blockSize, readOnly ? ', read-only' : '');
      return FileBlockDevice.#configured(new FileBlockDevice(path, fd, stat.size, blockSize, readOnly), options);
    } catch (error) {
      await closeAsync(fd).catch(() => undefined);
      throw error instanceof BlockMirrorError ? error : openError(path, error);
    }
  }

  static async #create(path: string, size: number, blockSize: number, flags: number, options: FileBlockDeviceOptions): Promise<FileBlockDevice> {
    let fd: number;
    try {
      fd = await openAsync(path, flags, 0o666);
    } catch (error) {
      // Lost a race with another creator: open what is there now.
      if ((error as SysError)?.code === 'EEXIST') return FileBlockDevice.open(path, { ...options, size, blockSize, create: false });
      throw openError(path, error);
    }
    try {
      await ftruncateAsync(fd, size);
    } catch (error) {
      await closeAsync(fd).catch(() => undefined);
      await unlinkAsync(path).catch(() => undefined);
      throw openError(path, error);
    }
    log('created %s (%d bytes, block %d)', path, size, blockSize);
    return FileBlockDevice.#configured(new FileBlockDevice(path, fd, size, blockSize, false), options);
  }

  /** Reads `length` bytes at `offset` into a new buffer of exactly `length` bytes. */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(this.#closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    // Not from the shared pool: the caller owns the whole backing store.
    const buffer = Buffer.allocUnsafeSlow(length);
    return this.#readInto(offset, buffer, buffer);
  }

  /** Reads `target.length` bytes at `offset` into `target` (see {@link BlockDevice.readInto}). */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    try {
      checkRange(this, offset, target.length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (target.length === 0) return Promise.resolve();
    return this.#readInto(offset, target, undefined);
  }

  /** Fills `buffer` from `offset`, then resolves with `result` (no second promise per read). */
  #readInto<T>(offset: number, buffer: Uint8Array, result: T): Promise<T> {
    const length = buffer.length;
    const fd = this.#fd;
    let inline: number | undefined;
    try {
      inline = this.#inlineReads.run(length, () => fs.readSync(fd, buffer, 0, length, offset));
    } catch (error) {
      return Promise.reject(this.#ioError(error as NodeJS.ErrnoException, 'read', offset, length));
    }
    // A short inline read (end of file) takes the general path below.
    if (inline === length) return Promise.resolve(result);
    this.#inFlight++;
    return new Promise<T>((resolve, reject) => {
      let done = 0;
      const onRead = (error: SysError, bytesRead: number): void => {
        if (error !== null) {
          this.#settled();
          reject(this.#ioError(error, 'read', offset, length));
          return;
        }
        done += bytesRead;
        if (bytesRead === 0 && done < length) {
          // End of file before the end of the device (file truncated behind our back): zeroes.
          buffer.fill(0, done);
          done = length;
        }
        if (done < length) {
          fs.read(fd, buffer, done, length - done, offset + done, onRead);
          return;
        }
        this.#settled();
        resolve(result);
      };
      fs.read(fd, buffer, 0, length, offset, onRead);
    });
  }

  /**
   * Writes `data` at `offset` (without copying it; do not modify `data` until the
   * promise settles). With `{ fua: true }` the data is durable when the promise resolves.
   */
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    let length: number;
    try {
      length = checkWriteData(data);
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.readOnly) return Promise.reject(this.#readOnlyError('write', offset, length));
    const fua = options?.fua === true;
    if (length === 0 && !fua) return Promise.resolve();
    this.#inFlight++;
    return new Promise<void>((resolve, reject) => {
      this.#writeAll(data, offset, fua, (error) => {
        this.#settled();
        if (error === null) resolve();
        else reject(this.#ioError(error, 'write', offset, length));
      });
    });
  }

  /** Makes every write that completed before this call durable (`fdatasync`). */
  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.readOnly) return Promise.resolve();
    this.#inFlight++;
    return new Promise<void>((resolve, reject) => {
      this.#fdatasync((error) => {
        this.#settled();
        if (error === null) resolve();
        else reject(this.#ioError(error, 'flush', 0, 0));
      });
    });
  }

  /** Zeroes `length` bytes at `offset` (written as zeroes, in chunks of at most 1 MiB). */
  trim(offset: number, length: number): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.readOnly) return Promise.reject(this.#readOnlyError('trim', offset, length));
    if (length === 0) return Promise.resolve();
    const zero = zeroBuffer();
    this.#inFlight++;
    return new Promise<void>((resolve, reject) => {
      let done = 0;
      const next = (error: SysError): void => {
        if (error !== null) {
          this.#settled();
          reject(this.#ioError(error, 'trim', offset, length));
          return;
        }
        if (done === length) {
          this.#settled();
          resolve();
          return;
        }
        const chunk = Math.min(zero.length, length - done);
        const at = offset + done;
        done += chunk;
        this.#writeAll(chunk === zero.length ? zero : zero.subarray(0, chunk), at, false, next);
      };
      next(null);
    });
  }

  /**
   * Refuses new requests, waits for those in flight, then closes the file.
   * Idempotent: every call returns the same promise.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#onIdle = resolve));
    try {
      await closeAsync(this.#fd);
    } catch (error) {
      throw this.#ioError(error as NodeJS.ErrnoException, 'close', 0, 0);
    }
    log('closed %s', this.path);
  }

  static #configured(device: FileBlockDevice, options: FileBlockDeviceOptions | undefined): FileBlockDevice {
    device.#inlineWrites = new InlineGate(options?.inlineWrites !== false);
    device.#inlineReads = new InlineGate(options?.inlineReads !== false, INLINE_READ_MEAN_LIMIT_MS);
    return device;
  }

  /** Writes all of `data` at `position` (looping on short writes), then fdatasync when `fua`. */
  #writeAll(data: Uint8Array, position: number, fua: boolean, callback: (error: SysError) => void): void {
    const fd = this.#fd;
    const total = data.byteLength;
    let done = 0;
    const afterWrite = (error: SysError, written: number): void => {
      if (error !== null) {
        callback(error);
        return;
      }
      done += written;
      if (done < total) {
        if (written === 0) {
          callback(Object.assign(new Error(`short write: 0 of ${total - done} bytes written`), { code: 'EIO' }));
          return;
        }
        fs.write(fd, data, done, total - done, position + done, afterWrite);
        return;
      }
      if (fua) this.#fdatasync(callback);
      else callback(null);
    };
    if (total === 0) {
      afterWrite(null, 0);
      return;
    }
    let inline: number | undefined;
    try {
      inline = this.#inlineWrites.run(total, () => fs.writeSync(fd, data, 0, total, position), this.#syncing > 0);
    } catch (error) {
      callback(error as NodeJS.ErrnoException);
      return;
    }
    if (inline !== undefined && inline > 0) afterWrite(null, inline);
    else fs.write(fd, data, 0, total, position, afterWrite);
  }

  /** `fdatasync` of the file, counted in `#syncing` while it runs. */
  #fdatasync(callback: (error: SysError) => void): void {
    this.#syncing++;
    fs.fdatasync(this.#fd, (error) => {
      this.#syncing--;
      callback(error);
    });
  }

  #settled(): void {
    if (--this.#inFlight === 0 && this.#onIdle !== undefined) {
      const onIdle = this.#onIdle;
      this.#onIdle = undefined;
      onIdle();
    }
  }

  #closedError(): BlockMirrorError {
    return new BlockMirrorError('BM_ERR_CLOSED', `the file device ${this.path} is closed`, {
      details: { path: this.path },
    });
  }

  #readOnlyError(op: string, offset: number, length: number): BlockMirrorError {
    return new BlockMirrorError('BM_ERR_READ_ONLY', `the file device ${this.path} is read-only`, {
      details: { op, offset, length, path: this.path },
    });
  }

  #ioError(error: NodeJS.ErrnoException, op: string, offset: number, length: number): BlockMirrorError {
    const mapped = toBlockMirrorError(error);
    return new BlockMirrorError(mapped.code, `${op} of ${length} bytes at ${offset} on ${this.path} failed: ${mapped.message}`, {
      cause: error,
      details: { op, offset, length, path: this.path, errno: error.code },
    });
  }
}

function openError(path: string, error: unknown): BlockMirrorError {
  const mapped = toBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT');
  return new BlockMirrorError(mapped.code, `cannot open ${path}: ${mapped.message}`, {
    cause: error,
    details: { path, errno: (error as SysError)?.code },
  });
}
