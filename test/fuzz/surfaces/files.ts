/**
 * Fuzz surface: the files read back at start — journal, dirty bitmap, pair
 * state, apply state, node id, and the failback bitmap a mirror reads (a
 * former primary's bitmap, read without changing it). Valid files written by the real code, then
 * damaged (state files optionally with their checksum fixed up, so the
 * checks behind it are reached). Every open ends in a usable object or a
 * coded error; a journal or bitmap refused as corrupt is left byte for byte
 * as it was; what a recovered journal yields stays inside sane bounds.
 */
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { FileJournal } from '../../../src/journal/file-journal.js';
import { FileDirtyBitmap, readBitmapRanges } from '../../../src/resync/file-dirty-bitmap.js';
import { FilePairStateStore } from '../../../src/replication/pair-state.js';
import { FileApplyStateStore } from '../../../src/replication/apply-state.js';
import { persistentNodeId } from '../../../src/storage/node-id.js';
import { applyMutations, mutationsArb } from '../mutate.js';
import { assertCoded, type Surface } from '../surface.js';

type Kind = 'journal' | 'bitmap' | 'failback-bitmap' | 'pair' | 'apply' | 'node-id';
const KINDS: Kind[] = ['journal', 'bitmap', 'failback-bitmap', 'pair', 'apply', 'node-id'];
/** Ranges a READY may carry in the fuzzed read (small, so that coarsening is reached). */
const MAX_RANGES = 4;
const VOLUME = 64 << 20;
const REGION = 1 << 20;

export interface FilesInput {
  kind: Kind;
  mutations: Parameters<typeof applyMutations>[1];
  fixCrc: boolean;
  /** A JSON value to put in place of one field of a state file. */
  swap: { field: number; value: unknown } | null;
}

let dir = '';
const stats: Record<string, number> = {};
const valid = new Map<Kind, Buffer>();

function shmOrTmp(): string {
  return existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
}

/** Re-serialises a state file body with a correct checksum. */
function stateFile(json: string): Buffer {
  return Buffer.from(`${json}\n${crc32(Buffer.from(json, 'utf8')).toString(16).padStart(8, '0')}\n`, 'utf8');
}

function swapField(file: Buffer, swap: { field: number; value: unknown }): Buffer {
  const text = file.toString('utf8');
  const json = text.split('\n')[0] ?? '';
  let body: unknown;
  try {
    body = JSON.parse(json);
  } catch {
    return file;
  }
  if (body === null || typeof body !== 'object') return file;
  const keys = Object.keys(body);
  if (keys.length === 0) return file;
  (body as Record<string, unknown>)[keys[swap.field % keys.length]!] = swap.value;
  return stateFile(JSON.stringify(body));
}

async function open(kind: Kind, path: string): Promise<void> {
  switch (kind) {
    case 'journal': {
      const j = await FileJournal.open(path);
      try {
        for await (const e of j.pending()) {
          if (!Number.isSafeInteger(e.seq) || e.seq < 1 || !Number.isSafeInteger(e.offset) || e.offset < 0) throw new Error(`journal yielded a bad entry: seq ${e.seq} offset ${e.offset}`);
          if (e.kind !== 'zero' && e.data.length > 1 << 20) throw new Error(`journal yielded ${e.data.length} bytes`);
        }
      } finally {
        await j.close();
      }
      return;
    }
    case 'bitmap': {
      const b = await FileDirtyBitmap.open(path, { volumeSize: VOLUME, regionSize: REGION });
      try {
        if (b.dirtyCount > VOLUME / REGION) throw new Error(`bitmap has ${b.dirtyCount} dirty regions of ${VOLUME / REGION}`);
      } finally {
        await b.close();
      }
      return;
    }
    case 'failback-bitmap': {
      const before = readFileSync(path);
      const r = await readBitmapRanges(path, { volumeSize: VOLUME, maxRanges: MAX_RANGES });
      if (!readFileSync(path).equals(before)) throw new Error('reading a failback bitmap changed the file');
      if (!r.ok) {
        if (typeof r.reason !== 'string' || r.reason === '') throw new Error('a refused failback bitmap gives no reason');
        return;
      }
      const { ranges } = r;
      if (ranges.length % 2 !== 0 || ranges.length > 2 * MAX_RANGES) throw new Error(`failback ranges: ${ranges.length} numbers (at most ${2 * MAX_RANGES} pairs)`);
      let end = 0;
      for (let k = 0; k < ranges.length; k += 2) {
        const offset = ranges[k]!;
        const length = ranges[k + 1]!;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length <= 0 || offset < end || offset + length > VOLUME) {
          throw new Error(`failback ranges not sorted, disjoint, non-empty and inside the volume: ${JSON.stringify(ranges)}`);
        }
        end = offset + length;
      }
      if (r.regions > 0 && ranges.length === 0) throw new Error(`${r.regions} dirty regions but no range`);
      return;
    }
    case 'pair':
      await new FilePairStateStore(path).load();
      return;
    case 'apply':
      await new FileApplyStateStore(path).load();
      return;
    case 'node-id': {
      const id = await persistentNodeId(join(path, '..'), 'primary');
      if (typeof id !== 'string' || id === '' || id.length > 256) throw new Error(`bad node id ${JSON.stringify(id)}`);
      return;
    }
  }
}

function pathOf(kind: Kind): string {
  return kind === 'node-id' ? join(dir, 'node-id') : join(dir, `fuzz.${kind}`);
}

export const filesSurface: Surface<FilesInput> = {
  name: 'files',
  stats,
  arbitrary: fc.record({
    kind: fc.constantFrom(...KINDS),
    mutations: mutationsArb(4),
    fixCrc: fc.boolean(),
    swap: fc.option(
      fc.record({ field: fc.nat(), value: fc.oneof(fc.constant(null), fc.integer(), fc.double(), fc.string(), fc.constant(-1), fc.constant(2 ** 60), fc.array(fc.nat(), { maxLength: 3 }), fc.object({ maxDepth: 1 })) }),
    ),
  }),
  async setup() {
    dir = mkdtempSync(join(shmOrTmp(), 'bm-fuzz-files-'));
    // valid files, written by the real code
    const journalPath = pathOf('journal');
    const j = await FileJournal.open(journalPath, { capacityBytes: 64 * 1024 });
    for (let seq = 1; seq <= 6; seq++) {
      if (seq % 3 === 0) await j.append({ kind: 'zero', seq, offset: seq * 4096, length: 1 << 20, fua: false, timestamp: seq });
      else await j.append({ seq, offset: seq * 512, data: Buffer.alloc(512 * seq, seq), fua: seq === 2, timestamp: seq });
    }
    j.release(1);
    await j.close();
    const b = await FileDirtyBitmap.open(pathOf('bitmap'), { volumeSize: VOLUME, regionSize: REGION });
    b.mark(0, 4096);
    b.mark(10 * REGION, 3 * REGION);
    await b.close();
    // a former primary's bitmap: several separate runs, so that MAX_RANGES coarsens them
    const fb = await FileDirtyBitmap.open(pathOf('failback-bitmap'), { volumeSize: VOLUME, regionSize: REGION });
    for (const region of [1, 3, 5, 7, 9, 20, 40, 63]) fb.mark(region * REGION, 4096);
    await fb.close();
    await new FilePairStateStore(pathOf('pair')).save({ disk: 'up-to-date', peer: 'inconsistent', lastInSync: 1_700_000_000_000, generations: { current: '018c0a1b2c3d-deadbeef', history: ['018c0a1b2c3d-cafef00d'] } });
    await new FileApplyStateStore(pathOf('apply')).save({ stream: 'stream-1', applied: 42 });
    await persistentNodeId(dir, 'primary');
    for (const k of KINDS) valid.set(k, readFileSync(pathOf(k)));
  },
  async teardown() {
    rmSync(dir, { recursive: true, force: true });
  },
  async run(input) {
    const path = pathOf(input.kind);
    let bytes = applyMutations(valid.get(input.kind)!, input.mutations);
    const stateKind = input.kind === 'pair' || input.kind === 'apply' || input.kind === 'node-id';
    if (stateKind && input.swap !== null) bytes = swapField(valid.get(input.kind)!, input.swap);
    else if (stateKind && input.fixCrc) bytes = stateFile(bytes.toString('utf8').split('\n')[0] ?? '');
    writeFileSync(path, bytes);
    try {
      await open(input.kind, path);
      stats[`${input.kind}:opened`] = (stats[`${input.kind}:opened`] ?? 0) + 1;
    } catch (error) {
      assertCoded(error, `opening a damaged ${input.kind}`);
      stats[`${input.kind}:${error.code}`] = (stats[`${input.kind}:${error.code}`] ?? 0) + 1;
      if ((error.code === 'BM_ERR_JOURNAL_CORRUPT' || error.code === 'BM_ERR_BITMAP_CORRUPT') && (input.kind === 'journal' || input.kind === 'bitmap')) {
        if (!readFileSync(path).equals(bytes)) throw new Error(`a ${input.kind} refused as corrupt was changed`, { cause: error });
      }
    }
  },
};
