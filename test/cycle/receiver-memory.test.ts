/**
 * Memory a cycle target holds for connections (issue 14, "memory bounded"):
 * data that arrived behind a BEGIN the store has not handled yet is released
 * when its connection closes before the commit.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeFrame } from '../../src/codec/encoder.js';
import { DEFAULT_CODEC_LIMITS, MessageType } from '../../src/codec/frame.js';
import type { VolumeOffer } from '../../src/codec/messages.js';
import { CycleHost } from '../../src/cycle/cycle-host.js';
import { cycleGeometry } from '../../src/cycle/geometry.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { FramedConnection } from '../../src/link/framed-connection.js';
import type { FileSystem } from '../../src/storage/file-system.js';
import { MemoryFileSystem } from '../../src/testing/simulator/memory-fs.js';
import { StubConnection, settle } from '../fuzz/stub-connection.js';
import { retainedBytes } from '../helpers/gc.js';

const SIZE = 1024 * 1024;
const CHUNK = 64 * 1024;
const GRAN = 4096;
const geometry = cycleGeometry(SIZE, 512, CHUNK, GRAN);
const OFFER: VolumeOffer = { name: 'v', size: SIZE, blockSize: 512, generation: 'cd'.repeat(16), stream: 'cycle', base: 0 };
const HELLO = { node: 'src', session: 's', protocol: [1, 1], slot: 0, slots: 1, features: ['cycle-v1'], nonce: new Uint8Array(32) };

/** A file system whose state-file writes wait for `open()` (a slow disk: the store's BEGIN of a first full copy waits for one). */
function gatedFileSystem(): { fs: FileSystem; close: () => void; open: () => void } {
  const view = new MemoryFileSystem().view();
  let release = (): void => {};
  let gate: Promise<void> = Promise.resolve();
  const fs = new Proxy(view, {
    get(target, prop) {
      if (prop === 'writeState') return async (path: string, body: unknown) => {
        await gate;
        return target.writeState(path, body);
      };
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  return {
    fs,
    close: () => (gate = new Promise<void>((resolve) => (release = resolve))),
    open: () => release(),
  };
}

test('issue 14: SPEC 33: connections closed before the target handled their BEGIN keep none of the data they sent (16 × 1 MiB full copies behind a slow state write)', async () => {
  const disk = gatedFileSystem();
  const device = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const host = await CycleHost.open({ dir: '/t', volumes: [{ name: 'v', device }], fs: disk.fs });
  const transferErrors: string[] = [];
  host.on('transfer-error', (info) => transferErrors.push(info.error.code));
  const session = async (id: number): Promise<void> => {
    const raw = new StubConnection();
    const conn = new FramedConnection(raw, { limits: DEFAULT_CODEC_LIMITS });
    host.accept(HELLO as never, [OFFER], conn);
    host.serve(conn, 'src', [OFFER]);
    const frames = [encodeFrame(MessageType.CYCLE_BEGIN, { id, to: 1, vols: [{ v: 0, from: 0, full: true, chunk: CHUNK, gran: GRAN, tbl: 0, n: geometry.chunkCount * geometry.granulesPerChunk }] })];
    for (let c = 0; c < geometry.chunkCount; c++) frames.push(encodeFrame(MessageType.CYCLE_DATA, { id, v: 0, s: c, g: 0, n: geometry.granulesPerChunk }, Buffer.alloc(CHUNK, id)));
    raw.feed(Buffer.concat(frames.flat()));
    await settle(2);
    raw.destroy(); // gone before its COMMIT, while its BEGIN still waits for the state write
    await settle(2);
  };
  await session(1); // warm-up
  disk.close();
  const before = await retainedBytes();
  for (let id = 2; id <= 17; id++) await session(id);
  const grown = (await retainedBytes()) - before;
  assert.ok(grown < 4 * 2 ** 20, `${(grown / 2 ** 20).toFixed(1)} MiB held for 16 closed connections (16 MiB of data)`);
  disk.open();
  await settle(20);
  assert.deepEqual(host.image('v'), { lineage: OFFER.generation, freeze: 0, seeding: true }, 'nothing was committed (a dropped first copy leaves the image seeding)');
  await host.close();
});

test('issue 14: SPEC 33: a flood of complete transfers (BEGIN, data, COMMIT, close) faster than BEGINs are handled is bounded by maxPendingTransfers: the others are refused at once with BM_ERR_BUSY and hold nothing; once the flood is handled, transfers are admitted again', async () => {
  const disk = gatedFileSystem();
  const device = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const host = await CycleHost.open({ dir: '/t', volumes: [{ name: 'v', device }], fs: disk.fs, maxPendingTransfers: 4 });
  const transferErrors: string[] = [];
  host.on('transfer-error', (info) => transferErrors.push(info.error.code));
  const session = async (id: number): Promise<void> => {
    const raw = new StubConnection();
    const conn = new FramedConnection(raw, { limits: DEFAULT_CODEC_LIMITS });
    host.accept(HELLO as never, [OFFER], conn);
    host.serve(conn, 'src', [OFFER]);
    const frames = [encodeFrame(MessageType.CYCLE_BEGIN, { id, to: id, vols: [{ v: 0, from: 0, full: true, chunk: CHUNK, gran: GRAN, tbl: 0, n: geometry.chunkCount * geometry.granulesPerChunk }] })];
    for (let c = 0; c < geometry.chunkCount; c++) frames.push(encodeFrame(MessageType.CYCLE_DATA, { id, v: 0, s: c, g: 0, n: geometry.granulesPerChunk }, Buffer.alloc(CHUNK, id)));
    frames.push(encodeFrame(MessageType.CYCLE_COMMIT, { id, to: id }));
    raw.feed(Buffer.concat(frames.flat()));
    await settle(2);
    raw.destroy(); // a whole transfer sent, then gone: its commit is still owed
    await settle(2);
  };
  disk.close();
  const before = await retainedBytes();
  for (let id = 1; id <= 16; id++) await session(id);
  const grown = (await retainedBytes()) - before;
  const busy = transferErrors.filter((c) => c === 'BM_ERR_BUSY').length;
  assert.equal(busy, 12, `refused at once past 4 admitted transfers: ${transferErrors.join(',')}`);
  assert.ok(grown < 8 * 2 ** 20, `${(grown / 2 ** 20).toFixed(1)} MiB held for 16 complete transfers of 1 MiB each (4 admitted)`);
  disk.open();
  await settle(50);
  // everything admitted was handled: a new transfer is admitted again (refused or not for its own reasons, never busy)
  transferErrors.length = 0;
  disk.close();
  await session(17);
  assert.deepEqual(transferErrors.filter((c) => c === 'BM_ERR_BUSY'), []);
  disk.open();
  await settle(20);
  await host.close();
});

test('issue 14: SPEC 33: a transfer holds its admission only until its BEGIN is handled: connections that stay open with a transfer begun (and superseded by the source\'s next one) do not make later transfers BM_ERR_BUSY', async () => {
  const device = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const host = await CycleHost.open({ dir: '/t', volumes: [{ name: 'v', device }], fs: new MemoryFileSystem().view(), maxPendingTransfers: 1 });
  const transferErrors: string[] = [];
  host.on('transfer-error', (info) => transferErrors.push(info.error.code));
  const open: StubConnection[] = [];
  for (let id = 1; id <= 4; id++) {
    const raw = new StubConnection();
    const conn = new FramedConnection(raw, { limits: DEFAULT_CODEC_LIMITS });
    host.accept(HELLO as never, [OFFER], conn);
    host.serve(conn, 'src', [OFFER]);
    // a BEGIN and part of the data, no COMMIT; the connection stays open
    const frames = [encodeFrame(MessageType.CYCLE_BEGIN, { id, to: id, vols: [{ v: 0, from: 0, full: true, chunk: CHUNK, gran: GRAN, tbl: 0, n: geometry.chunkCount * geometry.granulesPerChunk }] })];
    frames.push(encodeFrame(MessageType.CYCLE_DATA, { id, v: 0, s: 0, g: 0, n: geometry.granulesPerChunk }, Buffer.alloc(CHUNK, id)));
    raw.feed(Buffer.concat(frames.flat()));
    await settle(10);
    open.push(raw);
  }
  assert.deepEqual(transferErrors.filter((c) => c === 'BM_ERR_BUSY'), [], `every BEGIN was admitted once the one before was handled: ${transferErrors.join(',')}`);
  for (const raw of open) raw.destroy();
  await settle(10);
  await host.close();
});
