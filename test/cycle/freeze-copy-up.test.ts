/**
 * A freeze while a write is still in the old layer (cycle seeds 7579 and
 * 7959, I6): the first write of a granule into the new layer copies up the
 * parts of the granule it does not cover from the layers below. It must see
 * the old layer with every write issued before the freeze in it; before the
 * fix it could read the granule while such a write was still in flight (its
 * map record not written yet, or its data not yet), copy up the older
 * content, and the new layer — which wins over the old one — then held a
 * stale block: the next freeze and the volume itself lost the write.
 *
 * The interleaving is made exact by holding one write of the old layer's
 * files (real LayeredVolume on the simulator's crash-semantics memory files
 * and device).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/device/block-device.js';
import { CrashableMemoryDevice } from '../../src/device/crashable-memory-device.js';
import { LayeredVolume } from '../../src/cycle/layered-volume.js';
import type { FileSystem, StoredFile } from '../../src/storage/file-system.js';
import { MemoryFileSystem } from '../../src/testing/simulator/memory-fs.js';

const SIZE = 64 * 1024;
const GRAN = 4096;
/** Block A and block B: two 512-byte blocks of one granule (granule 1 of chunk 0). */
const A = GRAN + 512;
const B = GRAN + 2048;

/** Holds the next write to a path ending with `suffix` until `release()`. */
interface Gate {
  /** Resolves once the held write was issued. */
  reached: Promise<void>;
  release(): void;
}

/**
 * A view of `fs` whose files (map files) or devices (data files) hold the
 * first write to the path ending with `suffix` once `arm()` was called.
 */
function gatedFileSystem(fs: FileSystem, suffix: string): { fs: FileSystem; arm(): Gate } {
  let armed: { gate: Gate; open: Promise<void>; issued: () => void } | undefined;
  const hold = async (path: string): Promise<void> => {
    const a = armed;
    if (a === undefined || !path.endsWith(suffix)) return;
    armed = undefined;
    a.issued();
    await a.open;
  };
  const view: FileSystem = {
    readState: (path) => fs.readState(path),
    writeState: (path, body) => fs.writeState(path, body),
    remove: (path) => fs.remove(path),
    syncDir: (dir) => fs.syncDir(dir),
    list: (dir) => fs.list(dir),
    exists: (path) => fs.exists(path),
    readFile: (path) => fs.readFile(path),
    writeFile: (path, data) => fs.writeFile(path, data),
    openFile: async (path, mode): Promise<StoredFile> => {
      const file = await fs.openFile(path, mode);
      return {
        read: (position, length) => file.read(position, length),
        write: async (position, data) => (await hold(path), file.write(position, data)),
        size: () => file.size(),
        sync: () => file.sync(),
        close: () => file.close(),
      };
    },
    openDevice: async (path, options): Promise<BlockDevice> => {
      const device = await fs.openDevice(path, options);
      return new Proxy(device, {
        get(target, key) {
          if (key === 'write') return async (offset: number, data: Uint8Array) => (await hold(path), target.write(offset, data));
          const v = Reflect.get(target, key, target) as unknown;
          return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
        },
      });
    },
  };
  return {
    fs: view,
    arm(): Gate {
      let release!: () => void;
      let issued!: () => void;
      const open = new Promise<void>((resolve) => (release = resolve));
      const reached = new Promise<void>((resolve) => (issued = resolve));
      armed = { gate: { reached, release }, open, issued };
      return { reached, release };
    },
  };
}

async function setup(suffix: string): Promise<{ volume: LayeredVolume; arm: () => Gate }> {
  const files = new MemoryFileSystem();
  const gated = gatedFileSystem(files.view(), suffix);
  const base = new CrashableMemoryDevice(SIZE, { blockSize: 512 });
  const volume = await LayeredVolume.open(base.session(), { dir: '/v', name: 'v', fs: gated.fs, chunkSize: 16384, granularity: GRAN });
  return { volume, arm: gated.arm };
}

/** Freezes while `inFlight` is held in layer 1, then writes block B into layer 2 (a partial first write of the granule). */
async function freezeDuringWrite(volume: LayeredVolume, gate: Gate, inFlight: Promise<void>): Promise<void> {
  await gate.reached;
  await volume.prepareFreeze();
  assert.equal(volume.activatePrepared(), 1);
  const sealed = volume.seal(1);
  const later = volume.write(B, Buffer.alloc(512, 0xbb));
  // give the new layer's write every chance to copy up before the old one completes
  for (let i = 0; i < 50; i++) await new Promise((resolve) => setImmediate(resolve));
  gate.release();
  await Promise.all([inFlight, later, sealed]);
}

/** Fails with `what` and the byte found when the 512 bytes read are not all `byte`. */
function assertBlock(got: Buffer, byte: number, what: string): void {
  assert.ok(got.equals(Buffer.alloc(512, byte)), `${what}: found 0x${got[0]!.toString(16)}, expected 0x${byte.toString(16)}`);
}

async function assertHoldsA(volume: LayeredVolume): Promise<void> {
  assertBlock(await volume.readFrozen(1, A, 512), 0xaa, 'freeze 1 holds the write issued before it');
  assertBlock(await volume.read(A, 512), 0xaa, 'the volume still holds it after the next write into the granule (no stale copy-up over it)');
  assertBlock(await volume.read(B, 512), 0xbb, 'the new layer holds its own write');
  await volume.freeze();
  assertBlock(await volume.readFrozen(2, A, 512), 0xaa, 'freeze 2 holds it too');
  assert.equal(await volume.mergeFrozenIntoBase(), 2);
  assertBlock(await volume.read(A, 512), 0xaa, 'and so does the base once both layers are merged');
  await volume.close();
}

test('cycle seeds 7579, 7959: a first write of a granule into the new layer waits for the write still recording that granule in the old one (map record in flight) before it copies up', async () => {
  const { volume, arm } = await setup('.L1.map');
  // block A: the first write of the granule into layer 1 — held at its map record (data written, granule not marked yet)
  const gate = arm();
  const inFlight = volume.write(A, Buffer.alloc(512, 0xaa));
  await freezeDuringWrite(volume, gate, inFlight);
  await assertHoldsA(volume);
});

test('a first write of a granule into the new layer waits for a write still in flight in the old layer\'s slot (granule already marked) before it copies up', async () => {
  const { volume, arm } = await setup('.L1.data');
  await volume.write(GRAN + 3584, Buffer.alloc(512, 0x11)); // the granule is in layer 1 now
  // block A: a later write of that granule (straight into the slot) — held at its data write
  const gate = arm();
  const inFlight = volume.write(A, Buffer.alloc(512, 0xaa));
  await freezeDuringWrite(volume, gate, inFlight);
  await assertHoldsA(volume);
});
