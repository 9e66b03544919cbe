/**
 * Bounded memory with a journal backlog (DESIGN invariant 10, issue 11): the
 * journaled requests that are not in RAM are seq runs, not request objects;
 * payload bytes in RAM stay within `maxBufferedBytes` while the backlog builds
 * up and while it is replayed (payloads in flight included); async writes
 * that the budget has no room for are journaled from the caller's buffer.
 * Real replication code on the in-memory network; every wait is on an event.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import type { BlockDevice } from '../../src/device/block-device.js';
import { JournalBacklog, BACKLOG_LAGGED, BACKLOG_ZERO, type BacklogPiece } from '../../src/replication/journal-backlog.js';
import { SendQueue } from '../../src/replication/send-queue.js';
import type { MirrorRequest } from '../../src/replication/mirror-request.js';
import { ALIGN, RECORD_HEADER_BYTES, RING_START } from '../../src/journal/record-format.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { onceEvent } from '../helpers/events.js';
import { cutOff } from '../helpers/network.js';

const KiB = 1024;
const P = '10.12.0.1';
const T = '10.12.0.2';
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 40 }; // stale time well above an event-loop stall of a loaded machine
const BOUNDED = { timeout: Number(process.env.BOUND ?? 30_000) };

async function waitFor(emitter: Primary, cond: () => boolean): Promise<void> {
  while (!cond()) await Promise.race([onceEvent(emitter, 'volume-state'), onceEvent(emitter, 'link'), onceEvent(emitter, 'slot')]);
}

async function same(a: BlockDevice, b: BlockDevice): Promise<boolean> {
  return (await a.read(0, a.size)).equals(await b.read(0, b.size));
}

function target(network: MemoryNetwork, device: BlockDevice): Promise<MirrorTarget> {
  return createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 0 }, volumes: [{ name: 'v', device }], ...LINK });
}

function primary(network: MemoryNetwork, t: MirrorTarget, device: BlockDevice, extra: Partial<PrimaryOptions> = {}): Promise<Primary> {
  return createPrimary({
    transport: network.transport({ host: P }),
    peer: t.address,
    nodeId: 'primary-b',
    retryDelay: { min: 1, max: 20 },
    volumes: [{ name: 'v', device, mode: 'async' }],
    ...LINK,
    ...extra,
  });
}

/** A deterministic 4 KiB block for write `i`. */
function block(i: number, size = 4 * KiB): Buffer {
  const b = Buffer.alloc(size, 1 + (i % 251));
  b.writeUInt32LE(i, 0);
  return b;
}

test('JournalBacklog: consecutive seqs of one size and kind are one run; shift and takeThrough keep count and bytes exact', () => {
  const b = new JournalBacklog();
  for (let seq = 1; seq <= 1000; seq++) b.add(seq, 4096, BACKLOG_LAGGED);
  assert.deepEqual([b.count, b.runs, b.bytes, b.first, b.last], [1000, 1, 1000 * 4096, 1, 1000]);
  b.add(1001, 0, BACKLOG_ZERO);
  b.add(1003, 4096, BACKLOG_LAGGED); // a gap: seq 1002 is not journal-only
  b.add(1004, 512, 0);
  assert.deepEqual([b.count, b.runs, b.bytes], [1003, 4, 1001 * 4096 + 512]);
  assert.throws(() => b.add(1004, 512, 0), RangeError, 'seqs only grow');
  b.shift();
  assert.deepEqual([b.first, b.firstBytes, b.firstFlags, b.count], [2, 4096, BACKLOG_LAGGED, 1002]);
  const pieces: BacklogPiece[] = [];
  b.takeThrough(1003, (p) => pieces.push({ ...p }));
  assert.deepEqual(pieces, [
    { from: 2, to: 1000, bytes: 4096, flags: BACKLOG_LAGGED },
    { from: 1001, to: 1001, bytes: 0, flags: BACKLOG_ZERO },
    { from: 1003, to: 1003, bytes: 4096, flags: BACKLOG_LAGGED },
  ]);
  assert.deepEqual([b.count, b.runs, b.bytes, b.first, b.last], [1, 1, 512, 1004, 1004]);
  b.takeThrough(Number.MAX_SAFE_INTEGER, () => undefined);
  assert.deepEqual([b.count, b.runs, b.bytes, b.first, b.last], [0, 0, 0, 0, 0]);
});

test('SendQueue: a batch read back from the journal is merged at its places in one pass; prune drops what the volume no longer owns', () => {
  const req = (seq: number, kind: MirrorRequest['kind'] = 'write', barrier = seq - 1): MirrorRequest => ({ kind, seq, barrier }) as MirrorRequest;
  const q = new SendQueue();
  for (const seq of [3, 4, 10, 11]) q.push(req(seq));
  q.push(req(0, 'flush', 7));
  q.insertSorted([req(5), req(6), req(8), req(12)]);
  const order: string[] = [];
  const drained: MirrorRequest[] = [];
  for (let r = q.shift(); r !== undefined; r = q.shift()) {
    drained.push(r);
    order.push(r.kind === 'flush' ? `flush@${r.barrier}` : String(r.seq));
  }
  assert.deepEqual(order, ['3', '4', '5', '6', 'flush@7', '8', '10', '11', '12']);
  for (const r of drained) q.push(r);
  q.prune((r) => r.kind === 'flush' || r.seq % 2 === 0);
  assert.equal(q.length, 6);
  assert.equal(q.peek()?.seq, 4);
});

test('invariant 10, SPEC 14/19: async volume, file journal, link down, 2,000 writes over a 64 KiB budget: the backlog leaves RAM as seq runs (request objects stay bounded) and payloads within the budget; the replay keeps payloads within the budget (in flight included), applies each seq once and converges', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-backlog-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(16 << 20, { blockSize: 512 });
  const tdev = new RecordingDevice(new MemoryBlockDevice(16 << 20, { blockSize: 512 }));
  const t = await target(network, tdev);
  const budget = 64 * KiB;
  const p = await primary(network, t, pdev, { maxBufferedBytes: budget, journal: { dir, fsync: 'batch' }, connections: 4, maxInFlightPerConnection: 64 });
  try {
    const v = p.volume('v');
    cutOff(network, P, T);
    await waitFor(p, () => p.link === 'down');
    const n = 2000;
    let peakRequests = 0;
    for (let i = 0; i < n; i++) {
      assert.equal((await v.write(i * 4 * KiB, block(i))).mirror, 'queued');
      const m = v.describeMemory();
      assert.ok(m.heldBytes <= budget, `write ${i}: ${m.heldBytes} payload bytes in RAM (budget ${budget})`);
      peakRequests = Math.max(peakRequests, m.requests);
    }
    const m = v.describeMemory();
    // the requests still in RAM: those within the budget (the oldest) and the one being journaled
    assert.ok(peakRequests <= budget / (4 * KiB) + 2, `at most ${peakRequests} request objects in RAM for ${n} journaled writes`);
    // the send queue lets go of the others in bulk
    assert.ok(m.queue <= 2 * 257 + budget / (4 * KiB), `${m.queue} entries in the send queue`);
    assert.ok(m.journalOnly >= n - peakRequests, `${m.journalOnly} requests live in the journal only`);
    assert.ok(m.runs <= 4, `equal writes make few runs (${m.runs})`);
    assert.equal(v.status().pendingRequests, n);
    assert.equal(v.status().pendingBytes, n * 4 * KiB);

    // the replay: payloads in RAM (queued and in flight) stay within the budget, give or take one request
    let peakHeld = 0;
    let peakInFlight = 0;
    tdev.on('op', () => {
      const now = v.describeMemory();
      peakHeld = Math.max(peakHeld, now.heldBytes);
      peakInFlight = Math.max(peakInFlight, now.inFlightBytes);
    });
    network.heal(P, T);
    await p.drain(20_000);
    assert.ok(peakHeld <= budget + 4 * KiB, `${peakHeld} payload bytes in RAM during the replay (budget ${budget})`);
    assert.ok(peakInFlight <= budget + 4 * KiB, `${peakInFlight} payload bytes in flight (budget ${budget})`);
    assert.equal(await same(pdev, tdev), true, 'identical images');
    assert.equal(t.status().volumes.v!.appliedWrites, v.status().lastSeq, 'each seq applied once');
    assert.equal(v.status().journalEntries, 0);
    assert.deepEqual([v.describeMemory().journalOnly, v.describeMemory().requests], [0, 0]);
  } finally {
    await p.close({ drain: false });
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('invariant 2/10: an async write the budget has no room for is journaled from the caller\'s buffer, never sent from it: the caller reuses its buffers as soon as each write resolved (link down, then up) and the target still gets every write', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-borrow-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const p = await primary(network, t, pdev, { maxBufferedBytes: 16 * KiB, journal: { dir, fsync: 'batch' } });
  try {
    const v = p.volume('v');
    // one buffer per write in flight, reused (and scribbled over) as soon as its write resolved
    const free = Array.from({ length: 8 }, () => Buffer.alloc(4 * KiB));
    const writeWith = async (i: number): Promise<void> => {
      const buf = free.pop()!;
      block(i).copy(buf);
      assert.equal((await v.write((i % 256) * 4 * KiB, buf)).mirror, 'queued');
      buf.fill(0xee);
      free.push(buf);
    };
    cutOff(network, P, T);
    await waitFor(p, () => p.link === 'down');
    for (let i = 0; i < 100; i++) await writeWith(i);
    network.heal(P, T);
    await waitFor(p, () => p.link === 'up');
    // link up, budget full: the next ones are journaled from the caller's buffers too, and sent only from a copy or the journal
    const writes: Promise<void>[] = [];
    for (let i = 100; i < 300; i++) {
      writes.push(writeWith(i));
      if (writes.length === 8) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await p.drain(20_000);
    assert.equal(await same(pdev, tdev), true, 'identical images: no write was sent from the reused buffer');
  } finally {
    await p.close({ drain: false });
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('invariant 10: link up, 64 KiB writes on 4 connections with a window of 64: payloads in flight stay within a 256 KiB budget (not connections × window × payload)', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(32 << 20, { blockSize: 512 });
  const tdev = new RecordingDevice(new MemoryBlockDevice(32 << 20, { blockSize: 512 }));
  const t = await target(network, tdev);
  const budget = 256 * KiB;
  // an in-memory journal of its own, so that payloads are read back from it past the budget
  const p = await primary(network, t, pdev, { maxBufferedBytes: budget, maxAsyncLag: 0, connections: 4, maxInFlightPerConnection: 64, journal: { capacityBytes: 64 << 20 } });
  try {
    const v = p.volume('v');
    await waitFor(p, () => p.link === 'up');
    let peak = 0;
    tdev.on('op', () => {
      peak = Math.max(peak, v.describeMemory().inFlightBytes);
    });
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 400; i++) writes.push(v.write((i % 512) * 64 * KiB, block(i, 64 * KiB)));
    await Promise.all(writes);
    await p.drain(20_000);
    assert.ok(peak > 0);
    assert.ok(peak <= budget + 64 * KiB, `${peak} payload bytes in flight (budget ${budget})`);
    assert.equal(await same(pdev, tdev), true, 'identical images');
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

test('SPEC 16/19: a restarted primary keeps what its journal holds past the budget in the journal only (no request per record) and replays it in order', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-backlog-restart-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(8 << 20, { blockSize: 512 });
  const tdev = new RecordingDevice(new MemoryBlockDevice(8 << 20, { blockSize: 512 }));
  const t = await target(network, tdev);
  const options = { maxBufferedBytes: 32 * KiB, journal: { dir, fsync: 'batch' as const } };
  try {
    const first = await primary(network, t, pdev, options);
    try {
      cutOff(network, P, T);
      await waitFor(first, () => first.link === 'down');
      const v = first.volume('v');
      for (let i = 0; i < 600; i++) await v.write(i * 4 * KiB, block(i));
      // a zero among the writes: a range record, journal-only like them
      await v.zero(0, 8 * KiB);
    } finally {
      await first.close({ drain: false });
    }
    // the target takes nothing for now: the replay cannot drain what the restart recovered
    tdev.hold();
    network.heal(P, T);
    const second = await primary(network, t, pdev, options);
    const replayed = onceEvent<[{ volume: string; records: number; bytes: number }]>(second, 'journal-replayed');
    try {
      const v = second.volume('v');
      await waitFor(second, () => second.link === 'up');
      const m = v.describeMemory();
      assert.equal(v.status().journalEntries, 601);
      // within the budget: 8 writes of 4 KiB kept from the recovery, then at most a budget's worth read back and sent
      assert.ok(m.journalOnly >= 601 - 24, `${m.journalOnly} of 601 recovered records stay in the journal only`);
      assert.ok(m.requests <= 24, `${m.requests} requests in RAM`);
      tdev.release();
      await second.drain(20_000);
      // the replay is done once the target acknowledged every recovered record, journal-only ones included
      const [info] = await replayed;
      assert.deepEqual([info.volume, info.records, info.bytes], ['v', 601, 600 * 4 * KiB]);
      assert.equal(await same(pdev, tdev), true, 'identical images');
      assert.equal(v.status().journalEntries, 0);
    } finally {
      await second.close({ drain: false });
    }
  } finally {
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('SPEC 16/18: a journal-only record that reads back corrupt: the backlog becomes skip records and the whole volume is resynced; the pair converges', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-backlog-corrupt-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(4 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(4 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const p = await primary(network, t, pdev, { maxBufferedBytes: 32 * KiB, journal: { dir, fsync: 'always' } });
  try {
    const v = p.volume('v');
    cutOff(network, P, T);
    await waitFor(p, () => p.link === 'down');
    for (let i = 0; i < 300; i++) await v.write(i * 4 * KiB, block(i));
    assert.ok(v.describeMemory().journalOnly > 0);
    // flip a payload byte of the first journal-only record (seq 20: past the ones kept in RAM) under the open journal
    const path = join(dir, 'v.journal');
    const file = await readFile(path);
    let at = -1;
    for (let pos = RING_START; pos + RECORD_HEADER_BYTES <= file.length; pos += ALIGN) {
      if (file.readUInt32LE(pos) === 0x524a4d42 && file.readUInt32LE(pos + 16) === 20 && (file.readUInt16LE(pos + 6) & 2) === 0) {
        at = pos;
        break;
      }
    }
    assert.ok(at > 0, 'record 20 found');
    file[at + RECORD_HEADER_BYTES + 100]! ^= 0x5a;
    await writeFile(path, file);
    network.heal(P, T);
    await waitFor(p, () => p.link === 'up' && v.status().lastError?.code === 'BM_ERR_IO');
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true, 'identical images after the resync');
    assert.equal(v.status().journalEntries, 0, 'the unreadable records were released once the target held the skips durably');
  } finally {
    await p.close({ drain: false });
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('invariant 10: a long outage touching more than 4,096 regions: the primary flushes its own device in the background, so the write-intent bookkeeping of the requests that left RAM stays bounded; the pair converges', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-backlog-regions-'));
  const network = new MemoryNetwork();
  const pdev = new RecordingDevice(new MemoryBlockDevice(32 << 20, { blockSize: 512 }));
  const tdev = new MemoryBlockDevice(32 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  // one 4 KiB region per write
  const p = await primary(network, t, pdev, { maxBufferedBytes: 32 * KiB, journal: { dir, fsync: 'batch' }, resync: { regionSize: 4 * KiB } });
  try {
    const v = p.volume('v');
    cutOff(network, P, T);
    await waitFor(p, () => p.link === 'down');
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 4200; i++) {
      writes.push(v.write(i * 4 * KiB, block(i)));
      if (writes.length === 16) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    assert.ok(pdev.count('flush') >= 1, 'the primary flushed its device during the outage');
    network.heal(P, T);
    await p.drain(20_000);
    assert.equal(await same(pdev, tdev), true, 'identical images');
  } finally {
    await p.close({ drain: false });
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});
