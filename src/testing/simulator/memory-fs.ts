/**
 * {@link MemoryFileSystem}: a {@link FileSystem} in memory with crash
 * semantics, for simulations of the freeze/copy cycle code.
 *
 * - State files ({@link FileSystem.writeState}) and {@link FileSystem.writeFile}
 *   are durable when they resolve (the real ones sync the file and rename it
 *   atomically); removals and creations are durable at once.
 * - Files opened as devices are {@link CrashableMemoryDevice}s: a write is
 *   durable after a `flush()` (or with FUA).
 * - Random-access files ({@link FileSystem.openFile}) keep their writes in a
 *   volatile log until `sync()`.
 * - {@link MemoryFileSystem.crash} (a power loss) keeps the durable content
 *   plus a random subset of the volatile writes; a process kill loses nothing
 *   that completed (the page cache survives).
 * - A process uses the file system through a {@link MemoryFileSystem.view};
 *   revoking the view (the process died) freezes every operation of it.
 *
 * @module
 */
import { basename, dirname } from 'node:path';
import type { Clock } from '../../clock.js';
import { CrashableMemoryDevice, type CrashableOp } from '../../device/crashable-memory-device.js';
import type { BlockDevice } from '../../device/block-device.js';
import { BlockMirrorError } from '../../errors.js';
import type { FileSystem, OpenDeviceOptions, StoredFile } from '../../storage/file-system.js';
import { frozen, type Revocable } from './fences.js';

function missing(path: string): Error {
  return Object.assign(new Error(`ENOENT: no such file ${path}`), { code: 'ENOENT', path });
}

/** A random-access file: content, durable content, writes not synced yet. */
class MemFile {
  current: Buffer = Buffer.alloc(0);
  durable: Buffer = Buffer.alloc(0);
  log: Array<{ position: number; data: Buffer }> = [];

  write(position: number, data: Buffer): void {
    this.current = writeAt(this.current, position, data);
    this.log.push({ position, data });
  }

  sync(): void {
    this.durable = Buffer.from(this.current);
    this.log = [];
  }

  crash(random: () => number): void {
    let image = this.durable;
    for (const e of this.log) if (random() < 0.5) image = writeAt(image, e.position, e.data);
    this.durable = Buffer.from(image);
    this.current = Buffer.from(image);
    this.log = [];
  }
}

function writeAt(buf: Buffer, position: number, data: Buffer): Buffer {
  const out = position + data.length > buf.length ? Buffer.concat([buf, Buffer.alloc(position + data.length - buf.length)]) : buf;
  data.copy(out, position);
  return out;
}

/** Options of {@link MemoryFileSystem}. */
export interface MemoryFileSystemOptions {
  /** Clock of the devices' latency. */
  clock?: Clock;
  /** Latency of each device operation in ms. */
  latency?: () => number;
}

/** See the module notes. */
export class MemoryFileSystem {
  readonly #states = new Map<string, string>();
  readonly #files = new Map<string, MemFile>();
  readonly #devices = new Map<string, CrashableMemoryDevice>();
  readonly #options: MemoryFileSystemOptions;
  readonly #pendingErrors: Array<{ match: (path: string) => boolean; op: CrashableOp; times: number }> = [];

  constructor(options: MemoryFileSystemOptions = {}) {
    this.#options = options;
  }

  /** A view for one process (revoke it when the process dies). */
  view(): MemoryFileSystemView {
    return new MemoryFileSystemView(this);
  }

  /** Every path (state files, files, devices), sorted. */
  paths(): string[] {
    return [...new Set([...this.#states.keys(), ...this.#files.keys(), ...this.#devices.keys()])].sort();
  }

  /** The device stored at `path`, if any (for checkers and error injection). */
  device(path: string): CrashableMemoryDevice | undefined {
    return this.#devices.get(path);
  }

  /**
   * Makes the next `times` operations `op` fail on the devices whose path
   * matches (those that exist now; when none does, the next one opened).
   */
  injectDeviceError(match: (path: string) => boolean, op: CrashableOp, times: number): void {
    const hit = [...this.#devices.entries()].filter(([p]) => match(p));
    if (hit.length === 0) this.#pendingErrors.push({ match, op, times });
    for (const [, d] of hit) d.injectError(op, times);
  }

  /** Drops injected errors not consumed yet. */
  clearErrors(): void {
    this.#pendingErrors.length = 0;
    for (const d of this.#devices.values()) d.clearErrors();
  }

  /** A power loss: every volatile write is kept or lost at random (devices as {@link CrashableMemoryDevice.crash}). */
  crash(random: () => number): void {
    for (const path of [...this.#devices.keys()].sort()) this.#devices.get(path)!.crash(random);
    for (const path of [...this.#files.keys()].sort()) this.#files.get(path)!.crash(random);
  }

  // ---- operations (called through a view) -------------------------------

  /** @internal */
  _readState(path: string): unknown {
    const text = this.#states.get(path);
    return text === undefined ? undefined : (JSON.parse(text) as unknown);
  }

  /** @internal */
  _writeState(path: string, body: unknown): void {
    this.#states.set(path, JSON.stringify(body));
  }

  /** @internal */
  _remove(path: string): void {
    this.#states.delete(path);
    this.#files.delete(path);
    this.#devices.delete(path);
  }

  /** @internal */
  _list(dir: string): string[] {
    return this.paths()
      .filter((p) => dirname(p) === dir)
      .map((p) => basename(p));
  }

  /** @internal */
  _exists(path: string): boolean {
    return this.#states.has(path) || this.#files.has(path) || this.#devices.has(path);
  }

  /** @internal */
  _file(path: string, create: boolean): MemFile {
    let f = this.#files.get(path);
    if (create) this.#files.set(path, (f = new MemFile()));
    if (f === undefined) throw missing(path);
    return f;
  }

  /** @internal */
  _device(path: string, options: OpenDeviceOptions): CrashableMemoryDevice {
    let d = this.#devices.get(path);
    if (d === undefined) {
      if (options.create === false) throw missing(path);
      d = new CrashableMemoryDevice(options.size, {
        blockSize: options.blockSize,
        ...(this.#options.clock === undefined ? {} : { clock: this.#options.clock }),
        ...(this.#options.latency === undefined ? {} : { latency: this.#options.latency }),
      });
      this.#devices.set(path, d);
      for (let i = 0; i < this.#pendingErrors.length; i++) {
        const e = this.#pendingErrors[i]!;
        if (!e.match(path)) continue;
        d.injectError(e.op, e.times);
        this.#pendingErrors.splice(i--, 1);
      }
    } else if (d.size !== options.size) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${path} has ${d.size} bytes, not ${options.size}`);
    }
    return d;
  }
}

/** One process's access to a {@link MemoryFileSystem}: see {@link MemoryFileSystem.view}. */
export class MemoryFileSystemView implements FileSystem, Revocable {
  readonly #fs: MemoryFileSystem;
  #revoked = false;

  constructor(fs: MemoryFileSystem) {
    this.#fs = fs;
  }

  get revoked(): boolean {
    return this.#revoked;
  }

  /** Freezes every operation of this view, those of the devices opened through it included. */
  revoke(): void {
    this.#revoked = true;
  }

  /** Runs `op` in a microtask unless revoked; a revoked view's operations never settle. */
  #run<T>(op: () => T): Promise<T> {
    if (this.#revoked) return frozen();
    return Promise.resolve()
      .then(op)
      .then(
        (v) => (this.#revoked ? frozen<T>() : v),
        (e: unknown) => (this.#revoked ? frozen<T>() : Promise.reject(e)),
      );
  }

  readState(path: string): Promise<unknown> {
    return this.#run(() => this.#fs._readState(path));
  }

  writeState(path: string, body: unknown): Promise<void> {
    return this.#run(() => this.#fs._writeState(path, body));
  }

  remove(path: string): Promise<void> {
    return this.#run(() => this.#fs._remove(path));
  }

  syncDir(): Promise<void> {
    return this.#run(() => undefined);
  }

  list(dir: string): Promise<string[]> {
    return this.#run(() => this.#fs._list(dir));
  }

  exists(path: string): Promise<boolean> {
    return this.#run(() => this.#fs._exists(path));
  }

  readFile(path: string): Promise<Buffer> {
    return this.#run(() => Buffer.from(this.#fs._file(path, false).current));
  }

  writeFile(path: string, data: Uint8Array): Promise<void> {
    return this.#run(() => {
      const f = this.#fs._file(path, true);
      f.write(0, Buffer.from(data));
      f.sync();
    });
  }

  openFile(path: string, mode: 'create' | 'open'): Promise<StoredFile> {
    return this.#run(() => {
      const file = this.#fs._file(path, mode === 'create');
      let closed = false;
      const live = <T>(op: () => T): Promise<T> =>
        this.#run(() => {
          if (closed) throw new BlockMirrorError('BM_ERR_CLOSED', `${path} is closed`);
          return op();
        });
      const stored: StoredFile = {
        read: (position, length) => live(() => Buffer.from(file.current.subarray(position, position + length))),
        write: (position, data) => live(() => file.write(position, Buffer.from(data))),
        size: () => live(() => file.current.length),
        sync: () => live(() => file.sync()),
        close: () => {
          closed = true;
          return Promise.resolve();
        },
      };
      return stored;
    });
  }

  openDevice(path: string, options: OpenDeviceOptions): Promise<BlockDevice> {
    // the session asks this view whether it is revoked: no list of sessions here, which would keep every device ever opened (issue 14)
    return this.#run(() => this.#fs._device(path, options).session(this));
  }
}
