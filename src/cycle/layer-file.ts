/**
 * One layer of a {@link LayeredVolume} on disk: a data file whose slot `s`
 * occupies bytes `[s·chunkSize, (s+1)·chunkSize)` (a sparse file), and a map
 * file from which the layer's {@link FreezeTable} is rebuilt after a crash.
 *
 * Map file: a 4096-byte header, then fixed 32-byte records appended once per
 * write that makes granules present:
 * ```
 * header  0 u32 magic "BMLM" · 4 u16 version 1 · 8 u48 layer number · 16 16 B lineage
 *        32 u48 volume size · 40 u32 block size · 44 u32 chunk size · 48 u32 granularity
 *        52 u32 CRC-32 of bytes 0..51
 * record  0 u32 magic "BMLR" · 4 u32 layer number (low 32 bits) · 8 u32 lineage tag
 *        12 u32 chunk · 16 u32 slot · 20 u32 first granule · 24 u32 granule count
 *        28 u32 CRC-32 of bytes 0..27
 * ```
 * A record is written only after the data it describes, and a write is
 * acknowledged only after its record: so every acknowledged write is found
 * again after a process crash. Records are independent (no chain): a torn or
 * missing record (its write was never acknowledged) is skipped, and the
 * records around it still count. Records are group-committed: one map write
 * in flight, the records queued meanwhile follow in the next one.
 *
 * @module
 */
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { BlockDevice } from '../device/block-device.js';
import type { FileSystem, StoredFile } from '../storage/file-system.js';
import { FreezeTable } from './freeze-table.js';
import type { CycleGeometry } from './geometry.js';

/** Bytes of the map file header. */
export const MAP_HEADER_BYTES = 4096;
/** Bytes of one map record. */
export const MAP_RECORD_BYTES = 32;
const MAP_MAGIC = 0x424d4c4d;
const RECORD_MAGIC = 0x424d4c52;
const MAP_VERSION = 1;
const READ_STEP = 1024 * 1024;
/** Most records one map write carries. */
const MAX_RECORD_BATCH = 1024;

/** File names of layer `n` of volume `name` in `dir`. */
export function layerPaths(dir: string, name: string, n: number): { data: string; map: string } {
  return { data: join(dir, `${name}.L${n}.data`), map: join(dir, `${name}.L${n}.map`) };
}

function corrupt(path: string, what: string, details: Record<string, unknown> = {}): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `layer map ${path}: ${what}`, { details: { path, ...details } });
}

function encodeHeader(n: number, lineage: Buffer, g: CycleGeometry): Buffer {
  const h = Buffer.alloc(MAP_HEADER_BYTES);
  h.writeUInt32BE(MAP_MAGIC, 0);
  h.writeUInt16BE(MAP_VERSION, 4);
  h.writeUIntBE(n, 8, 6);
  lineage.copy(h, 16, 0, 16);
  h.writeUIntBE(g.size, 32, 6);
  h.writeUInt32BE(g.blockSize, 40);
  h.writeUInt32BE(g.chunkSize, 44);
  h.writeUInt32BE(g.granularity, 48);
  h.writeUInt32BE(crc32(h.subarray(0, 52)), 52);
  return h;
}

/** A layer: data file, map file and the freeze table rebuilt from it. */
export class LayerFile {
  /** Layer number: the freeze number this layer gets (or got) when frozen. */
  readonly number: number;
  readonly table: FreezeTable;
  readonly data: BlockDevice;
  readonly paths: { data: string; map: string };
  readonly #fs: FileSystem;
  /** Set once the layer is frozen and every write into it has completed and is durable. */
  sealed = false;
  readonly #map: StoredFile;
  readonly #tag: number;
  #mapEnd: number;
  #pending = 0;
  #idle: Array<() => void> = [];
  #unsynced = false;
  #mapWrites = 0;
  #mapIdle: Array<() => void> = [];
  /** Records waiting for the map write in flight. */
  readonly #records: Array<{ rec: Buffer; resolve: () => void; reject: (e: Error) => void }> = [];
  readonly #locks = new Map<number, Promise<void>>();
  #closing: Promise<void> | undefined;

  private constructor(fs: FileSystem, n: number, table: FreezeTable, data: BlockDevice, map: StoredFile, mapEnd: number, lineage: Buffer, paths: { data: string; map: string }) {
    this.#fs = fs;
    this.number = n;
    this.table = table;
    this.data = data;
    this.#map = map;
    this.#mapEnd = mapEnd;
    this.#tag = lineage.readUInt32BE(0);
    this.paths = paths;
  }

  /** Creates (or re-creates, empty) layer `n`, durably. */
  static async create(fs: FileSystem, dir: string, name: string, n: number, geometry: CycleGeometry, lineage: Buffer): Promise<LayerFile> {
    const paths = layerPaths(dir, name, n);
    await fs.remove(paths.data);
    let map: StoredFile | undefined;
    let data: BlockDevice | undefined;
    try {
      map = await fs.openFile(paths.map, 'create');
      await map.write(0, encodeHeader(n, lineage, geometry));
      await map.sync();
      data = await fs.openDevice(paths.data, { size: geometry.chunkCount * geometry.chunkSize, blockSize: geometry.blockSize });
      await fs.syncDir(dir);
      return new LayerFile(fs, n, new FreezeTable(geometry), data, map, MAP_HEADER_BYTES, lineage, paths);
    } catch (error) {
      await map?.close().catch(() => undefined);
      await data?.close().catch(() => undefined);
      throw toBlockMirrorError(error);
    }
  }

  /**
   * Opens layer `n` and rebuilds its table from the map records.
   *
   * @throws {BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` when the header does not
   *   match (other volume, layer or geometry) or valid records contradict each other.
   */
  static async open(fs: FileSystem, dir: string, name: string, n: number, geometry: CycleGeometry, lineage: Buffer): Promise<LayerFile> {
    const paths = layerPaths(dir, name, n);
    let map: StoredFile | undefined;
    let data: BlockDevice | undefined;
    try {
      map = await fs.openFile(paths.map, 'open');
      const head = await map.read(0, MAP_HEADER_BYTES);
      const bytesRead = head.length;
      if (bytesRead < 56 || head.readUInt32BE(0) !== MAP_MAGIC || head.readUInt32BE(52) !== crc32(head.subarray(0, 52))) {
        throw corrupt(paths.map, 'bad header');
      }
      if (head.readUInt16BE(4) !== MAP_VERSION) throw corrupt(paths.map, 'unsupported version', { version: head.readUInt16BE(4) });
      if (head.readUIntBE(8, 6) !== n || !head.subarray(16, 32).equals(lineage.subarray(0, 16))) {
        throw corrupt(paths.map, 'belongs to another layer or volume');
      }
      if (
        head.readUIntBE(32, 6) !== geometry.size ||
        head.readUInt32BE(40) !== geometry.blockSize ||
        head.readUInt32BE(44) !== geometry.chunkSize ||
        head.readUInt32BE(48) !== geometry.granularity
      ) {
        throw corrupt(paths.map, 'geometry differs from the volume');
      }
      const table = new FreezeTable(geometry);
      const tag = lineage.readUInt32BE(0);
      const size = await map.size();
      let pos = MAP_HEADER_BYTES;
      while (pos < size) {
        const buf = await map.read(pos, Math.min(READ_STEP, size - pos));
        const got = buf.length;
        if (got === 0) break;
        for (let at = 0; at + MAP_RECORD_BYTES <= got; at += MAP_RECORD_BYTES) {
          if (buf.readUInt32BE(at) !== RECORD_MAGIC || buf.readUInt32BE(at + 28) !== crc32(buf.subarray(at, at + 28))) continue;
          if (buf.readUInt32BE(at + 4) !== n % 2 ** 32 || buf.readUInt32BE(at + 8) !== tag) continue;
          const chunk = buf.readUInt32BE(at + 12);
          const slot = buf.readUInt32BE(at + 16);
          try {
            table.assign(chunk, slot);
            table.mark(chunk, buf.readUInt32BE(at + 20), buf.readUInt32BE(at + 24));
          } catch (error) {
            throw corrupt(paths.map, `record at ${pos + at} contradicts the table: ${(error as Error).message}`, { position: pos + at });
          }
        }
        pos += got - (got % MAP_RECORD_BYTES);
        if (got % MAP_RECORD_BYTES !== 0 && got < READ_STEP) break;
      }
      const recordsEnd = MAP_HEADER_BYTES + Math.ceil(Math.max(0, size - MAP_HEADER_BYTES) / MAP_RECORD_BYTES) * MAP_RECORD_BYTES;
      data = await fs.openDevice(paths.data, { size: geometry.chunkCount * geometry.chunkSize, blockSize: geometry.blockSize, create: false });
      const layer = new LayerFile(fs, n, table, data, map, recordsEnd, lineage, paths);
      // the process that wrote it may have died before syncing: its writes survive in the page
      // cache only, and the first sync (a seal, a flush) must make them durable too
      layer.#unsynced = true;
      return layer;
    } catch (error) {
      await map?.close().catch(() => undefined);
      await data?.close().catch(() => undefined);
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(paths.map, 'missing layer file');
      throw toBlockMirrorError(error);
    }
  }

  /** Byte position of `offset` (volume offset inside `chunk`) in the data file. */
  position(chunk: number, offset: number): number {
    const slot = this.table.slotOf(chunk);
    return slot * this.table.geometry.chunkSize + (offset - chunk * this.table.geometry.chunkSize);
  }

  /**
   * Appends the record "granules `[granule, granule+count)` of `chunk` are in
   * `slot`"; resolves once it is written. Group commit: one map write at a
   * time; records that arrive meanwhile go out together in the next one.
   */
  appendRecord(chunk: number, slot: number, granule: number, count: number): Promise<void> {
    const rec = Buffer.allocUnsafe(MAP_RECORD_BYTES);
    rec.writeUInt32BE(RECORD_MAGIC, 0);
    rec.writeUInt32BE(this.number % 2 ** 32, 4);
    rec.writeUInt32BE(this.#tag, 8);
    rec.writeUInt32BE(chunk, 12);
    rec.writeUInt32BE(slot, 16);
    rec.writeUInt32BE(granule, 20);
    rec.writeUInt32BE(count, 24);
    rec.writeUInt32BE(crc32(rec.subarray(0, 28)), 28);
    this.#unsynced = true;
    return new Promise<void>((resolve, reject) => {
      this.#records.push({ rec, resolve, reject });
      if (this.#mapWrites === 0) this.#writeRecords();
    });
  }

  /** Writes every queued record in one positional write, then the next batch. */
  #writeRecords(): void {
    const batch = this.#records.splice(0, MAX_RECORD_BATCH);
    if (batch.length === 0) {
      for (const f of this.#mapIdle.splice(0)) f();
      return;
    }
    const buf = batch.length === 1 ? batch[0]!.rec : Buffer.concat(batch.map((b) => b.rec));
    const at = this.#mapEnd;
    this.#mapEnd += buf.length;
    this.#mapWrites++;
    const finish = (error: unknown): void => {
      this.#mapWrites--;
      if (error === null) for (const b of batch) b.resolve();
      else {
        const err = toBlockMirrorError(error);
        for (const b of batch) b.reject(err);
      }
      this.#writeRecords();
    };
    this.#map.write(at, buf).then(
      () => finish(null),
      (error: unknown) => finish(error ?? new Error('layer map write failed')),
    );
  }

  /** Marks that data was written (a later {@link sync} must flush it). */
  touched(): void {
    this.#unsynced = true;
  }

  /** Makes every completed write of this layer durable (data file, then map file). */
  async sync(): Promise<void> {
    if (!this.#unsynced) return;
    this.#unsynced = false;
    try {
      await this.data.flush();
      await this.#map.sync();
    } catch (error) {
      this.#unsynced = true;
      throw toBlockMirrorError(error);
    }
  }

  /** A volume write enters this layer. */
  enter(): void {
    this.#pending++;
  }

  /** A volume write left this layer. */
  leave(): void {
    if (--this.#pending === 0) for (const f of this.#idle.splice(0)) f();
  }

  /** Resolves once no volume write is in this layer. */
  drained(): Promise<void> {
    if (this.#pending === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.#idle.push(resolve));
  }

  /** Serialises first writes into `chunk` (copy-up must not race another write of the same granule). */
  lock(chunk: number): Promise<() => void> {
    const previous = this.#locks.get(chunk) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.#locks.set(chunk, tail);
    return previous.then(() => () => {
      release();
      if (this.#locks.get(chunk) === tail) this.#locks.delete(chunk);
    });
  }

  /** Closes both files (after the writes in flight). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.drained();
      if (this.#mapWrites > 0 || this.#records.length > 0) await new Promise<void>((resolve) => this.#mapIdle.push(resolve));
      await this.data.close();
      await this.#map.close();
    })();
    return this.#closing;
  }

  /** Closes and deletes both files. */
  async remove(dir: string): Promise<void> {
    await this.close();
    await this.#fs.remove(this.paths.data);
    await this.#fs.remove(this.paths.map);
    await this.#fs.syncDir(dir);
  }
}
