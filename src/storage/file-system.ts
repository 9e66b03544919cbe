/**
 * {@link FileSystem}: the file operations the freeze/copy cycle code uses
 * (state files, layer and staging files, commit markers), behind one
 * interface, so that a simulation can run the real cycle code on files in
 * memory with crash semantics (`MemoryFileSystem` in `blockmirror/testing`).
 * {@link nodeFileSystem}, the default, is the real file system.
 *
 * @module
 */
import fs from 'node:fs';
import { access, open, readdir, readFile, statfs, type FileHandle } from 'node:fs/promises';
import type { BlockDevice } from '../device/block-device.js';
import { FileBlockDevice } from '../device/file-device.js';
import { toBlockMirrorError } from '../errors.js';
import { readStateFile, removeFile, syncDirectory, writeStateFile } from './state-file.js';

/** A random-access file opened through a {@link FileSystem} (a layer's map file). */
export interface StoredFile {
  /** Reads up to `length` bytes at `position` (fewer at the end of the file). */
  read(position: number, length: number): Promise<Buffer>;
  /** Writes `data` at `position` (not durable before {@link sync}). */
  write(position: number, data: Uint8Array): Promise<void>;
  /** Current length in bytes. */
  size(): Promise<number>;
  /** Makes the completed writes durable (`fdatasync`). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Options of {@link FileSystem.openDevice}. */
export interface OpenDeviceOptions {
  size: number;
  blockSize: number;
  /** Create the file when missing (default true). */
  create?: boolean;
}

/**
 * File operations of the cycle code. Paths are joined with `/`
 * (`node:path`'s `join`); a directory is listed by its path.
 */
export interface FileSystem {
  /** Reads a state file written by {@link writeState} (undefined when missing). Throws `BM_ERR_JOURNAL_CORRUPT` for a damaged one. */
  readState(path: string): Promise<unknown>;
  /** Replaces a state file atomically and durably. */
  writeState(path: string, body: unknown): Promise<void>;
  /** Removes a file (a missing file is fine). Durable after {@link syncDir}. */
  remove(path: string): Promise<void>;
  /** Makes creations, renames and removals in `dir` durable. */
  syncDir(dir: string): Promise<void>;
  /** Names of the entries of `dir`. */
  list(dir: string): Promise<string[]>;
  /** True when `path` exists. */
  exists(path: string): Promise<boolean>;
  /** The whole content of a file. */
  readFile(path: string): Promise<Buffer>;
  /** Creates or replaces a file with `data` and syncs it (its directory entry is durable after {@link syncDir}). */
  writeFile(path: string, data: Uint8Array): Promise<void>;
  /** Opens a file for random access; `create` truncates or creates it. */
  openFile(path: string, mode: 'create' | 'open'): Promise<StoredFile>;
  /** Opens (or creates) a file as a block device of `size` bytes. */
  openDevice(path: string, options: OpenDeviceOptions): Promise<BlockDevice>;
  /**
   * Bytes an unprivileged writer may still write in the file system holding
   * `dir` (optional: without it, or when it returns undefined, no space check
   * is made).
   */
  freeBytes?(dir: string): Promise<number | undefined>;
}

class NodeStoredFile implements StoredFile {
  readonly #handle: FileHandle;

  constructor(handle: FileHandle) {
    this.#handle = handle;
  }

  async read(position: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await this.#handle.read(buf, 0, length, position);
    return bytesRead === length ? buf : buf.subarray(0, bytesRead);
  }

  /** One positional write (callback API: no promise per partial write), retried on a short write. */
  write(position: number, data: Uint8Array): Promise<void> {
    const fd = this.#handle.fd;
    return new Promise<void>((resolve, reject) => {
      let done = 0;
      const onWrite = (error: NodeJS.ErrnoException | null, written: number): void => {
        if (error !== null) return reject(toBlockMirrorError(error));
        done += written;
        if (done === data.byteLength) return resolve();
        if (written === 0) return reject(toBlockMirrorError(Object.assign(new Error('short write'), { code: 'EIO' })));
        fs.write(fd, data, done, data.byteLength - done, position + done, onWrite);
      };
      fs.write(fd, data, 0, data.byteLength, position, onWrite);
    });
  }

  async size(): Promise<number> {
    return (await this.#handle.stat()).size;
  }

  sync(): Promise<void> {
    return this.#handle.datasync();
  }

  close(): Promise<void> {
    return this.#handle.close();
  }
}

/** The real file system (the default of every cycle component). */
export const nodeFileSystem: FileSystem = Object.freeze({
  readState: readStateFile,
  writeState: writeStateFile,
  remove: removeFile,
  syncDir: syncDirectory,
  list: (dir: string) => readdir(dir),
  exists: (path: string) =>
    access(path).then(
      () => true,
      () => false,
    ),
  readFile: (path: string) => readFile(path),
  async writeFile(path: string, data: Uint8Array): Promise<void> {
    const handle = await open(path, 'w', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
  async openFile(path: string, mode: 'create' | 'open'): Promise<StoredFile> {
    return new NodeStoredFile(await open(path, mode === 'create' ? 'w+' : 'r+', 0o644));
  },
  openDevice: (path: string, options: OpenDeviceOptions): Promise<BlockDevice> =>
    FileBlockDevice.open(path, { size: options.size, blockSize: options.blockSize, ...(options.create === false ? { create: false } : {}) }),
  async freeBytes(dir: string): Promise<number | undefined> {
    try {
      const s = await statfs(dir);
      return Number(s.bavail) * Number(s.bsize);
    } catch {
      return undefined;
    }
  },
});
