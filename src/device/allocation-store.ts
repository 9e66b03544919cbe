/**
 * The allocation map file beside a volume's other state: a 32-byte header
 * (magic `BMALLOC1`, version 1, region size, volume size, bytes of bits)
 * followed by the bits of an {@link AllocationMap}. A file that is missing,
 * short, of another volume size or region size, or otherwise unreadable is not
 * trusted: the map then starts as "every region may hold data" (the
 * conservative answer) and the file is written anew.
 *
 * @module
 */
import { AllocationMap, ALLOCATION_REGION_SIZE } from './allocation-map.js';
import { nodeFileSystem, type FileSystem, type StoredFile } from '../storage/file-system.js';
import { dirname } from 'node:path';

const MAGIC = Buffer.from('BMALLOC1', 'latin1');
const VERSION = 1;
/** Bytes before the bits. */
export const ALLOCATION_HEADER_SIZE = 32;

/** Options of {@link openAllocationStore}. */
export interface AllocationStoreOptions {
  /** Volume size in bytes. */
  size: number;
  /** What a map created now starts as: `zero` for a volume created empty now, `data` for an existing image. */
  initial: 'zero' | 'data';
  /** Region size (default {@link ALLOCATION_REGION_SIZE}). */
  regionSize?: number;
  /** File system (default the real one; the simulator passes its own). */
  fs?: FileSystem;
}

/** How the map was obtained. */
export type AllocationMapOrigin = 'loaded' | 'created' | 'untrusted';

/** A map and the file that keeps it. */
export class AllocationStore {
  readonly map: AllocationMap;
  /** `loaded` from the file, `created` (no file: started as `initial`), `untrusted` (file unusable: started as "may hold data"). */
  readonly origin: AllocationMapOrigin;
  readonly #file: StoredFile;
  #closed = false;

  /** @internal use {@link openAllocationStore} */
  constructor(map: AllocationMap, file: StoredFile, origin: AllocationMapOrigin) {
    this.map = map;
    this.#file = file;
    this.origin = origin;
  }

  /** Writes the bits changed since the last call and syncs the file. Resolves at once when nothing changed. */
  async persist(): Promise<void> {
    if (this.#closed) return;
    const dirty = this.map.takeDirty();
    if (dirty === undefined) return;
    try {
      await this.#file.write(ALLOCATION_HEADER_SIZE + dirty.from, Buffer.from(this.map.bits.subarray(dirty.from, dirty.to)));
      await this.#file.sync();
    } catch (error) {
      this.map.redirty(dirty.from, dirty.to);
      throw error;
    }
  }

  /** Closes the file (without persisting). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#file.close();
  }
}

function header(map: AllocationMap): Buffer {
  const h = Buffer.alloc(ALLOCATION_HEADER_SIZE);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(VERSION, 8);
  h.writeUInt32LE(map.regionSize, 12);
  h.writeBigUInt64LE(BigInt(map.size), 16);
  h.writeUInt32LE(map.bits.length, 24);
  return h;
}

/**
 * Opens (or creates) the allocation map file at `path`. A map it creates is
 * durable (file and directory entry synced) before this resolves, so that no
 * write can land before the map that will claim its region.
 */
export async function openAllocationStore(path: string, options: AllocationStoreOptions): Promise<AllocationStore> {
  const fs = options.fs ?? nodeFileSystem;
  const regionSize = options.regionSize ?? ALLOCATION_REGION_SIZE;
  if (await fs.exists(path)) {
    const file = await fs.openFile(path, 'open');
    try {
      const map = new AllocationMap(options.size, 'data', regionSize);
      const expected = header(map);
      const stored = await file.read(0, ALLOCATION_HEADER_SIZE + map.bits.length);
      if (stored.length === ALLOCATION_HEADER_SIZE + map.bits.length && stored.subarray(0, ALLOCATION_HEADER_SIZE).equals(expected)) {
        map.load(stored.subarray(ALLOCATION_HEADER_SIZE));
        return new AllocationStore(map, file, 'loaded');
      }
    } catch {
      // unreadable: written anew below
    }
    await file.close();
    return create(fs, path, new AllocationMap(options.size, 'data', regionSize), 'untrusted');
  }
  return create(fs, path, new AllocationMap(options.size, options.initial, regionSize), 'created');
}

async function create(fs: FileSystem, path: string, map: AllocationMap, origin: AllocationMapOrigin): Promise<AllocationStore> {
  const file = await fs.openFile(path, 'create');
  try {
    await file.write(0, Buffer.concat([header(map), map.bits]));
    await file.sync();
    await fs.syncDir(dirname(path));
  } catch (error) {
    await file.close().catch(() => undefined);
    throw error;
  }
  map.takeDirty();
  return new AllocationStore(map, file, origin);
}
