/**
 * A merge that fails with an I/O error after its commit marker (issue 11,
 * scenario 13): the image on disk is then between two freezes. Readers must
 * never see it: they wait for the retry that completes the merge from the
 * durable staging files, or fail with a coded error; new transfers are
 * refused; status and events tell; the source is told the commit did not
 * happen and retries. Virtual time (fake timers) drives the retries.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { FaultyBlockDevice } from '../../src/device/faulty-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { createCycleSource, type CycleResult } from '../../src/cycle/cycle-runner.js';
import { createCycleTarget } from '../../src/cycle/cycle-target.js';
import { FreezeTable } from '../../src/cycle/freeze-table.js';
import { cycleGeometry } from '../../src/cycle/geometry.js';
import { StagingStore, type StagePlan, type StagingStoreEvents, type StagingStoreOptions } from '../../src/cycle/staging-store.js';
import { isBlockMirrorError, type BlockMirrorError } from '../../src/errors.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { linksUp, openVolume, pattern, subDir, tempDir, waitFor } from './helpers.js';

const root = tempDir('merge-failure');
after(root.cleanup);
let seq = 0;
const KiB = 1024;
const SIZE = 256 * KiB;
const CHUNK = 64 * KiB;
const GRAN = 4 * KiB;
const LINEAGE = 'ef'.repeat(16);
const geometry = cycleGeometry(SIZE, 512, CHUNK, GRAN);

type FakeClock = ReturnType<typeof FakeTimers.createClock>;
type MergeErrorInfo = Parameters<NonNullable<StagingStoreEvents['mergeError']>>[0];

/**
 * The freezes (indexes into `images`) that `buf` can be, block by block: a
 * block matching several images counts for each. Fails when no single image
 * explains every block (a mixed image), naming the mix.
 */
function assertOneFreeze(buf: Buffer, images: Buffer[], what: string): number[] {
  let candidates = images.map((_, i) => i);
  const seen = new Set<string>();
  for (let off = 0; off < buf.length; off += GRAN) {
    const block = buf.subarray(off, off + GRAN);
    const matching = images.map((img, i) => (img.subarray(off, off + GRAN).equals(block) ? i : -1)).filter((i) => i >= 0);
    seen.add(matching.join('|') || 'none');
    candidates = candidates.filter((i) => matching.includes(i));
  }
  assert.ok(candidates.length > 0, `${what}: a mixed image (blocks of freezes ${[...seen].join(', ')})`);
  return candidates;
}

/** True when `buf` mixes blocks of several images (no single one explains it). */
function isMixed(buf: Buffer, images: Buffer[]): boolean {
  try {
    assertOneFreeze(buf, images, 'probe');
    return false;
  } catch {
    return true;
  }
}

/** Promise state probe: whether `p` settled by now (after the microtasks and one event-loop turn). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise<void>((resolve) => setImmediate(resolve));
  return done;
}

/** `p`, with its rejection marked handled (a test that fails early closes the store under a waiting read). */
function watched<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/** A queue of the store's merge events, awaited one by one. */
function mergeEvents(): { events: StagingStoreEvents; nextError(): Promise<MergeErrorInfo>; nextRecovered(): Promise<{ attempts: number }> } {
  const errors: MergeErrorInfo[] = [];
  const recovered: Array<{ attempts: number }> = [];
  const waiters: Array<() => void> = [];
  const wake = (): void => {
    for (const w of waiters.splice(0)) w();
  };
  const take = async <T>(queue: T[]): Promise<T> => {
    while (queue.length === 0) await new Promise<void>((resolve) => waiters.push(resolve));
    return queue.shift()!;
  };
  return {
    events: {
      mergeError: (info) => {
        errors.push(info);
        wake();
      },
      mergeRecovered: (info) => {
        recovered.push(info);
        wake();
      },
    },
    nextError: () => take(errors),
    nextRecovered: () => take(recovered),
  };
}

interface StoreFixture {
  dir: string;
  file: FileBlockDevice;
  device: FaultyBlockDevice;
  store: StagingStore;
  timers: FakeClock;
  /** Reads the whole image as a reader of the target does. */
  read(): Promise<Buffer>;
  close(): Promise<void>;
}

async function storeFixture(options: Omit<StagingStoreOptions, 'clock'>): Promise<StoreFixture> {
  const dir = subDir(root.dir, `store-${++seq}`);
  const file = await FileBlockDevice.open(join(dir, 'img'), { size: SIZE });
  const timers = FakeTimers.createClock(0);
  const device = new FaultyBlockDevice(file, { clock: clockFrom(timers) });
  const store = await StagingStore.open(dir, [{ name: 'v', device }], { ...options, clock: clockFrom(timers) });
  const f: StoreFixture = {
    dir,
    file,
    device,
    store,
    timers,
    read: () => f.store.read('v', 0, SIZE),
    close: async () => {
      await f.store.close();
      await device.close();
    },
  };
  return f;
}

function plan(p: Partial<StagePlan>): StagePlan {
  return { name: 'v', lineage: LINEAGE, from: 0, full: false, chunkSize: CHUNK, granularity: GRAN, tableBytes: 0, granules: 0, ...p };
}

async function fullCopy(store: StagingStore, to: number, image: Buffer): Promise<void> {
  const t = await store.begin('src', to, [plan({ full: true, granules: geometry.chunkCount * geometry.granulesPerChunk })]);
  for (let c = 0; c < geometry.chunkCount; c++) await t.data(0, c, 0, CHUNK / GRAN, image.subarray(c * CHUNK, (c + 1) * CHUNK));
  await t.commit();
}

async function delta(store: StagingStore, from: number, to: number, table: FreezeTable, image: Buffer): Promise<void> {
  const bytes = table.encode();
  const t = await store.begin('src', to, [plan({ from, tableBytes: bytes.length, granules: table.granules })]);
  t.table(0, 0, bytes);
  for (const run of table.runs()) await t.data(0, run.slot, run.granule, run.count, image.subarray(run.offset, run.offset + run.length));
  await t.commit();
}

/** Every other granule of the image changed (so the merge writes many separate runs). */
function everyOtherGranule(image: Buffer, seed: number): { table: FreezeTable; next: Buffer } {
  const next = Buffer.from(image);
  const table = new FreezeTable(geometry);
  for (let g = 0; g < SIZE / GRAN; g += 2) {
    const chunk = Math.floor((g * GRAN) / CHUNK);
    if (table.slotOf(chunk) < 0) table.allocate(chunk);
    table.mark(chunk, g % (CHUNK / GRAN), 1);
    pattern(GRAN, seed + g).copy(next, g * GRAN);
  }
  return { table, next };
}

describe('cycle target: a merge that fails with an I/O error', () => {
  it('SPEC 31/33: readers wait and never see the mixed image; the merge is retried from the staging files and reads then return freeze 2 exactly', async () => {
    const ev = mergeEvents();
    let duringMerge: Promise<Buffer> | undefined;
    const f = await storeFixture({
      events: ev.events,
      mergeRetry: { min: 100, max: 400 },
      readTimeout: 60000,
      hooks: { mergeStart: (info) => void (info.to === 2 && (duringMerge ??= watched(f.read()))) },
    });
    try {
      const image1 = pattern(SIZE, 1);
      await fullCopy(f.store, 1, image1);
      const { table, next: image2 } = everyOtherGranule(image1, 100);
      // the image device fails every write after the first two: the merge stops half-way
      f.device.addFault({ op: 'write', error: 'EIO', afterOps: 2 });
      await assert.rejects(delta(f.store, 1, 2, table, image2), (e) => isBlockMirrorError(e, 'BM_ERR_IO'), 'the commit is reported as failed');
      const first = await ev.nextError();
      assert.deepEqual({ to: first.to, attempts: first.attempts, retryInMs: first.retryInMs, code: first.error.code }, { to: 2, attempts: 1, retryInMs: 100, code: 'BM_ERR_IO' });
      assert.ok(isMixed(await f.file.read(0, SIZE), [image1, image2]), 'the device itself holds a mix of freezes 1 and 2 (the scenario)');

      // readers (one from during the merge, one after the failure) wait; the state still says freeze 1; transfers are refused
      assert.ok(duringMerge !== undefined);
      const afterFailure = watched(f.read());
      assert.equal(await settled(duringMerge), false, 'a read started during the merge still waits');
      assert.equal(await settled(afterFailure), false, 'a read after the failure waits');
      assert.deepEqual(f.store.image('v'), { lineage: LINEAGE, freeze: 1, seeding: false });
      const failure = f.store.mergeFailure('v');
      assert.deepEqual({ to: failure?.to, attempts: failure?.attempts, code: failure?.error.code, next: failure?.nextRetryInMs }, { to: 2, attempts: 1, code: 'BM_ERR_IO', next: 100 });
      await assert.rejects(f.store.begin('src', 2, [plan({ from: 1 })]), (e) => isBlockMirrorError(e, 'BM_ERR_IO') && (e as BlockMirrorError).details.mergePending === true);

      // the fault persists for the first retry: backoff doubles, readers keep waiting
      f.timers.tick(100);
      const second = await ev.nextError();
      assert.deepEqual({ attempts: second.attempts, retryInMs: second.retryInMs }, { attempts: 2, retryInMs: 200 });
      assert.equal(await settled(afterFailure), false);

      // the fault clears: the next retry completes the merge
      f.device.clearFaults();
      f.timers.tick(199);
      assert.equal(await settled(afterFailure), false, 'no retry before its backoff');
      f.timers.tick(1);
      assert.deepEqual(await ev.nextRecovered(), { to: 2, volumes: ['v'], attempts: 2 });
      for (const [what, read] of [['during the merge', duringMerge], ['after the failure', afterFailure], ['after the recovery', f.read()]] as const) {
        const got = await read;
        assert.deepEqual(assertOneFreeze(got, [image1, image2], what), [1], `${what}: freeze 2`);
        assert.ok(got.equals(image2), `${what}: exactly freeze 2`);
      }
      assert.deepEqual(f.store.image('v'), { lineage: LINEAGE, freeze: 2, seeding: false });
      assert.equal(f.store.mergeFailure('v'), undefined);
      assert.deepEqual(readdirSync(f.dir).filter((n) => /stage|marker/.test(n)), [], 'marker and staging files are gone');

      // the next cycle goes through as usual
      const more = everyOtherGranule(image2, 900);
      await delta(f.store, 2, 3, more.table, more.next);
      assert.ok((await f.read()).equals(more.next));
      assert.equal(f.timers.countTimers(), 0, 'no timer left');
    } finally {
      await f.close();
    }
  });

  it('SPEC 31/33: with a permanent I/O error, reads fail with BM_ERR_IO after readTimeout (never mixed data); retries back off; reopening replays the merge', async () => {
    const ev = mergeEvents();
    const f = await storeFixture({ events: ev.events, mergeRetry: { min: 100, max: 400 }, readTimeout: 1000 });
    try {
      const image1 = pattern(SIZE, 2);
      await fullCopy(f.store, 1, image1);
      const { table, next: image2 } = everyOtherGranule(image1, 200);
      f.device.addFault({ op: 'write', error: 'EIO', afterOps: 3 });
      await assert.rejects(delta(f.store, 1, 2, table, image2), (e) => isBlockMirrorError(e, 'BM_ERR_IO'));
      assert.equal((await ev.nextError()).retryInMs, 100);
      assert.ok(isMixed(await f.file.read(0, SIZE), [image1, image2]));

      const read = watched(f.read());
      const backoff: number[] = [];
      for (const step of [100, 200, 400]) {
        f.timers.tick(step);
        backoff.push((await ev.nextError()).retryInMs!);
      }
      assert.deepEqual(backoff, [200, 400, 400], 'the backoff doubles up to its maximum');
      assert.equal(await settled(read), false, 'within readTimeout the read waits');
      f.timers.tick(1000 - 700);
      await assert.rejects(read, (e) => {
        assert.ok(isBlockMirrorError(e, 'BM_ERR_IO'), String(e));
        assert.deepEqual(e.details, { volume: 'v', freeze: 1, to: 2, attempts: 4, mergePending: true });
        return true;
      });
      assert.equal(f.store.mergeFailure('v')?.attempts, 4);

      // a read started now also fails once its own timeout passes, never with data
      const late = watched(f.read());
      f.timers.tick(1000);
      await assert.rejects(late, (e) => isBlockMirrorError(e, 'BM_ERR_IO'));

      // closing stops the retries (a waiting read fails with BM_ERR_CLOSED); the durable marker is replayed on the next open
      const waiting = watched(f.read());
      await f.store.close();
      await assert.rejects(waiting, (e) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
      assert.equal(f.timers.countTimers(), 0, 'no retry scheduled after close');
      f.device.clearFaults();
      f.store = await StagingStore.open(f.dir, [{ name: 'v', device: f.device }], { clock: clockFrom(f.timers) });
      assert.equal(f.store.image('v').freeze, 2);
      assert.ok((await f.read()).equals(image2));
    } finally {
      await f.close();
    }
  });

  it('SPEC 31: a read in flight when a merge starts returns the previous freeze whole; the merge writes only after it', async () => {
    let mergeStarted!: () => void;
    const started = new Promise<void>((resolve) => (mergeStarted = resolve));
    const f = await storeFixture({ hooks: { mergeStart: (info) => void (info.to === 2 && mergeStarted()) } });
    try {
      const image1 = pattern(SIZE, 4);
      await fullCopy(f.store, 1, image1);
      const { table, next: image2 } = everyOtherGranule(image1, 400);
      f.device.addLatency(50, { op: 'read', times: 1 });
      const read = watched(f.read());
      const writes = f.device.stats.writes;
      const commit = watched(delta(f.store, 1, 2, table, image2));
      await started;
      assert.equal(await settled(commit), false);
      assert.equal(f.device.stats.writes, writes, 'no image write while the read is in flight');
      f.timers.tick(50);
      assert.ok((await read).equals(image1), 'the read returns freeze 1 whole');
      await commit;
      assert.ok((await f.read()).equals(image2));
    } finally {
      await f.close();
    }
  });

  it('SPEC 31/33: end to end — the source is told the commit failed and retries; target status shows the failed merge; reads wait, then return the frozen image', async () => {
    const dir = subDir(root.dir, `e2e-${++seq}`);
    const net = new MemoryNetwork();
    const timers = FakeTimers.createClock(0);
    const file = await FileBlockDevice.open(join(dir, 'mirror.img'), { size: SIZE });
    const device = new FaultyBlockDevice(file);
    const target = await createCycleTarget({
      listen: { host: 't', port: 7000 },
      dir: subDir(dir, 'state'),
      volumes: [{ name: 'v', device }],
      transport: net.transport({ host: 't' }),
      clock: clockFrom(timers),
      mergeRetry: { min: 1000, max: 1000 },
      readTimeout: 60000,
    });
    const volume = await openVolume(dir, 'primary.img', SIZE, { chunkSize: CHUNK, granularity: GRAN });
    const source = await createCycleSource({
      volumes: [{ name: 'v', volume }],
      targets: [{ host: 't', port: 7000 }],
      transport: net.transport({ host: 's' }),
      interval: 0,
      retryDelay: { min: 5, max: 20 },
    });
    try {
      await linksUp(source);
      await volume.write(0, pattern(SIZE, 3));
      assert.equal((await source.freezeNow()).targets[0]!.ok, true);
      const image1 = await target.volume('v').read(0, SIZE);
      for (let g = 0; g < SIZE / GRAN; g += 2) await volume.write(g * GRAN, pattern(GRAN, 300 + g));

      device.addFault({ op: 'write', error: 'EIO', afterOps: 2 });
      const failed = waitFor(target, 'merge-error');
      const r2 = await source.freezeNow();
      const image2 = await volume.readFrozen(2, 0, SIZE);
      assert.equal(r2.targets[0]!.ok, false, 'the source was told the commit did not happen');
      assert.equal(r2.targets[0]!.error?.code, 'BM_ERR_IO');
      await failed;
      assert.ok(isMixed(await file.read(0, SIZE), [image1, image2]), 'the device holds a mix (the scenario)');
      const st = target.status().volumes.v!;
      assert.equal(st.freeze, 1);
      assert.deepEqual({ ...st.mergeError, message: undefined }, { to: 2, attempts: 1, code: 'BM_ERR_IO', message: undefined, nextRetryInMs: 1000 });
      assert.equal(JSON.parse(JSON.stringify(target.status())).volumes.v.mergeError.code, 'BM_ERR_IO', 'status is JSON-serialisable');

      const read = watched(target.volume('v').read(0, SIZE));
      // the source keeps retrying the cycle from its kept frozen layer: refused while the merge is pending
      const refused = await waitFor(source, 'target-error', (info: { error: BlockMirrorError }) => /no transfer until then/.test(info.error.message));
      assert.equal(refused[0].error.code, 'BM_ERR_IO');
      assert.equal(await settled(read), false, 'the read waits for the merge');

      device.clearFaults();
      const recovered = waitFor(target, 'merge-recovered');
      const caughtUp = waitFor(source, 'cycle', (res: CycleResult) => res.targets[0]!.ok && res.targets[0]!.freeze === 2);
      timers.tick(1000);
      assert.deepEqual((await recovered)[0], { to: 2, volumes: ['v'], attempts: 1 });
      await caughtUp;
      const got = await read;
      assert.deepEqual(assertOneFreeze(got, [image1, image2], 'the read'), [1]);
      assert.ok(got.equals(image2), 'exactly freeze 2');
      assert.equal(target.status().volumes.v!.mergeError, undefined);
      assert.equal(target.status().volumes.v!.freeze, 2);
      assert.equal(source.status().targets[0]!.freeze, 2);
    } finally {
      await source.close();
      await volume.close();
      await target.close();
      await device.close();
    }
  });
});
