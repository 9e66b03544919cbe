/**
 * The numbered scenarios of issue 11, each reproduced against the real
 * replication code on the in-memory network (no sleeps: every wait is on an
 * event or a state), asserting the fixed behaviour.
 */
import { WrappedDevice } from '../helpers/wrapped-device.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryNetwork, type MemoryLink } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import type { BlockDevice, WriteOptions } from '../../src/device/block-device.js';
import { MemoryJournal } from '../../src/journal/memory-journal.js';
import { MemoryDirtyBitmap } from '../../src/resync/dirty-bitmap.js';
import type { Journal, JournalEntry, JournalStats, PendingJournalEntry } from '../../src/journal/journal.js';
import { newStreamId } from '../../src/replication/stream-file.js';
import { MemoryApplyStateStore, type ApplyState } from '../../src/replication/apply-state.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { FaultyBlockDevice } from '../../src/device/faulty-device.js';
import { onceEvent } from '../helpers/events.js';
import { cutOff } from '../helpers/network.js';

const KiB = 1024;
const P = '10.11.0.1';
const T = '10.11.0.2';
/** Link timers at millisecond scale (as in outage.test.ts). */
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 40 }; // stale time well above an event-loop stall of a loaded machine

/**
 * Waits, on the primary's events only, until `cond` holds. A core that never
 * gets there fails by the test's timeout (`BOUNDED`), not by hanging.
 */
async function waitFor(emitter: Primary, cond: () => boolean): Promise<void> {
  while (!cond()) await Promise.race([onceEvent(emitter, 'volume-state'), onceEvent(emitter, 'link'), onceEvent(emitter, 'slot')]);
}

/** Per-test bound: a liveness failure (a stall) fails the test instead of hanging the run. */
const BOUNDED = { timeout: Number(process.env.BOUND ?? 20_000) };

async function same(a: BlockDevice, b: BlockDevice): Promise<boolean> {
  return (await a.read(0, a.size)).equals(await b.read(0, b.size));
}

function target(network: MemoryNetwork, device: BlockDevice, extra: Record<string, unknown> = {}, port = 0): Promise<MirrorTarget> {
  return createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port }, volumes: [{ name: 'v', device, ...extra }], ...LINK });
}

function primary(network: MemoryNetwork, t: MirrorTarget, device: BlockDevice, mode: 'sync' | 'async', extra: Partial<PrimaryOptions> = {}): Promise<Primary> {
  return createPrimary({
    transport: network.transport({ host: P }),
    peer: t.address,
    nodeId: 'primary-a',
    retryDelay: { min: 1, max: 20 },
    // both images start blank, i.e. identical: no initial sync (as --assume-clean)
    volumes: [{ name: 'v', device, mode, initialSync: 'none' }],
    ...LINK,
    ...extra,
  });
}

test('issue 11 (1): SPEC 16: seqs are never reused after a restart: a write journaled in an outage, five acknowledged ones, clean close, restart: the next write is numbered above all and reaches the target', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-i11-1-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  try {
    const journal = { dir, fsync: 'always' as const };
    const first = await primary(network, t, pdev, 'sync', { journal });
    const used: number[] = [];
    try {
      const v = first.volume('v');
      cutOff(network, P, T);
      await onceEvent(first, 'link');
      const degraded = await v.write(0, Buffer.alloc(4 * KiB, 1));
      assert.equal(degraded.mirror, 'failed');
      used.push(degraded.seq!);
      assert.equal(v.status().journalEntries, 1);
      network.heal(P, T);
      await waitFor(first, () => v.state === 'in-sync');
      for (let i = 1; i <= 5; i++) {
        const r = await v.write(i * 8 * KiB, Buffer.alloc(4 * KiB, 1 + i));
        assert.equal(r.mirror, 'acknowledged');
        used.push(r.seq!);
      }
      assert.equal(new Set(used).size, 6, `six distinct seqs: ${used.join(',')}`);
    } finally {
      await first.close();
    }
    const second = await primary(network, t, pdev, 'sync', { journal });
    try {
      const v = second.volume('v');
      const r = await v.write(2 * KiB, Buffer.alloc(4 * KiB, 0x77));
      assert.equal(r.mirror, 'acknowledged');
      assert.ok(r.seq! > Math.max(...used), `the new write's seq ${r.seq} is above every seq used before (${used.join(',')})`);
      await second.drain();
      assert.equal(v.state, 'in-sync');
      assert.ok((await tdev.read(2 * KiB, 4 * KiB)).every((b) => b === 0x77), 'the new write is on the target');
      assert.equal(await same(pdev, tdev), true, 'target image equals the primary');
    } finally {
      await second.close();
    }
  } finally {
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('issue 11 (1): SPEC 16: the same with the journal still holding the outage write at the stop (no durability flush yet, close without drain): the restarted stream continues above every seq and the next write is applied, not taken for a duplicate', BOUNDED, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-i11-1b-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  // no durability flush: the target never reports seq 1 durable, so its journal record stays
  const noFlush = { durableDelay: 3_600_000, durableInterval: 3_600_000 };
  try {
    const journal = { dir, fsync: 'always' as const };
    const first = await primary(network, t, pdev, 'sync', { journal, ...noFlush });
    const used: number[] = [];
    try {
      const v = first.volume('v');
      cutOff(network, P, T);
      await onceEvent(first, 'link');
      const degraded = await v.write(0, Buffer.alloc(4 * KiB, 1));
      assert.equal(degraded.mirror, 'failed');
      used.push(degraded.seq!);
      network.heal(P, T);
      // the link is back; the sync writes below are ordered after the outage write, so their acks imply it
      await waitFor(first, () => first.link === 'up');
      for (let i = 1; i <= 5; i++) {
        const r = await v.write(i * 8 * KiB, Buffer.alloc(4 * KiB, 1 + i));
        assert.equal(r.mirror, 'acknowledged');
        used.push(r.seq!);
      }
      assert.equal(v.status().journalEntries, 1, 'the outage write is still journaled at the stop');
    } finally {
      await first.close({ drain: false });
    }
    const second = await primary(network, t, pdev, 'sync', { journal });
    try {
      const v = second.volume('v');
      const r = await v.write(2 * KiB, Buffer.alloc(4 * KiB, 0x77));
      assert.equal(r.mirror, 'acknowledged');
      assert.ok(r.seq! > Math.max(...used), `the new write's seq ${r.seq} is above every seq used before (${used.join(',')})`);
      assert.ok((await tdev.read(2 * KiB, 4 * KiB)).every((b) => b === 0x77), 'the acknowledged write is on the target');
      await second.drain();
      assert.equal(v.state, 'in-sync');
      assert.equal(await same(pdev, tdev), true, 'target image equals the primary');
    } finally {
      await second.close();
    }
  } finally {
    await t.close();
    await rm(dir, { recursive: true, force: true });
  }
});

/** A target's apply state "on disk" that survives the target's restart, and tells when it was saved. */
class ObservedApplyState extends MemoryApplyStateStore {
  readonly saves: ApplyState[] = [];
  #waiters: Array<() => void> = [];

  override async save(state: ApplyState): Promise<void> {
    await super.save(state);
    this.saves.push({ ...state });
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves once a save recorded `applied` ≥ `seq`. */
  async savedThrough(seq: number): Promise<void> {
    while (!this.saves.some((s) => s.applied >= seq)) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }
}

/** The memory link of each of the primary's slots, as the target saw them connect. */
function linksBySlot(network: MemoryNetwork, t: MirrorTarget): Map<number, MemoryLink> {
  const bySlot = new Map<number, MemoryLink>();
  t.on('connection', (info) => {
    const link = network.links.find((l) => l.aToB.from.host === info.address.host && l.aToB.from.port === info.address.port);
    if (link !== undefined) bySlot.set(info.slot, link);
  });
  return bySlot;
}

/** Resolves when `device` completed a write at `offset`. */
function writeDone(device: RecordingDevice, offset: number): Promise<void> {
  return new Promise((resolve) => {
    const on = (op: { op: string; offset: number }): void => {
      if (op.op !== 'write' || op.offset !== offset) return;
      device.off('done', on);
      resolve();
    };
    device.on('done', on);
  });
}

for (const durableBeforeRestart of [false, true]) {
  test(`issue 11 (2): SPEC 13: E then L to one block on two connections, E's ack lost, target restarts on the same disk${durableBeforeRestart ? ' after recording its apply state durably' : ' before any durable apply state'}: the target keeps L, in-sync with identical images`, BOUNDED, async () => {
    const network = new MemoryNetwork();
    const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
    const tdev = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
    const state = new ObservedApplyState();
    let t = await target(network, tdev, { applyState: state });
    const port = t.address.port;
    const slotLinks = linksBySlot(network, t);
    // two connections; no periodic durability flush in the middle of the steps; E's caller gives up quickly
    const p = await primary(network, t, pdev, 'sync', { connections: 2, mirrorTimeout: 100, durableInterval: 3_600_000 });
    try {
      const v = p.volume('v');
      const block = 64 * KiB;
      // every answer of the target is held: E's ack must not arrive
      for (const link of network.links) link.stall('bToA');
      const eApplied = writeDone(tdev, block);
      const e = v.write(block, Buffer.alloc(4 * KiB, 0xe0));
      await eApplied;
      // the link carrying E (and its ack) stays stalled; every other link answers again
      const eSlot = p.status().peers[0]!.connections.findIndex((c) => c.inFlight > 0);
      assert.notEqual(eSlot, -1, 'E is in flight on one connection');
      const eLink = slotLinks.get(eSlot)!;
      for (const link of network.links) if (link !== eLink) link.unstall('bToA');
      const er = await e;
      assert.equal(er.mirror, 'failed', 'E timed out without its acknowledgement');
      const l = await v.write(block, Buffer.alloc(4 * KiB, 0x1a));
      assert.equal(l.mirror, 'acknowledged', 'L acknowledged (on the other connection)');
      assert.ok((await tdev.read(block, 4 * KiB)).every((b) => b === 0x1a), 'the target applied L over E');
      if (durableBeforeRestart) {
        // a flush makes the target record its apply state (stream, applied through L)
        await v.flush();
        await state.savedThrough(l.seq!);
      }
      // the target restarts on the same disk and the same apply state; E's held ack is lost with the connection
      await t.close();
      t = await target(network, tdev, { applyState: state }, port);
      await waitFor(p, () => p.link === 'up' && v.state === 'in-sync');
      assert.ok((await tdev.read(block, 4 * KiB)).every((b) => b === 0x1a), 'the target holds L, not the resent E');
      assert.equal(await same(pdev, tdev), true, 'identical images');
    } finally {
      await p.close();
      await t.close();
    }
  });
}

test('issue 11 (3): SPEC 20: a refused peer changes nothing: while the real primary is cut off, an unrelated primary is refused for split brain; the target volume is untouched and the real primary continues without loss', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const t = await target(network, tdev);
  const p = await primary(network, t, pdev, 'sync');
  try {
    const v = p.volume('v');
    for (let i = 0; i < 3; i++) assert.equal((await v.write(i * 8 * KiB, Buffer.alloc(4 * KiB, 1 + i))).mirror, 'acknowledged');
    // W4 reaches the target but its ack is lost in the cut: the primary will resend it
    for (const link of network.links) link.stall('bToA');
    const applied = writeDone(tdev, 0);
    const w4 = v.write(0, Buffer.alloc(4 * KiB, 0x44));
    await applied;
    const closed = new Promise<void>((resolve) => {
      const check = (): void => {
        if (t.status().volumes.v!.connections === 0) resolve();
      };
      t.on('connection-error', check);
      check();
    });
    cutOff(network, P, T);
    await closed;
    assert.equal((await w4).mirror, 'failed');
    // a newer write to the same block while cut off (journaled)
    assert.equal((await v.write(0, Buffer.alloc(4 * KiB, 0x55))).mirror, 'failed');
    const before = t.status().volumes.v!;
    const imageBefore = await tdev.read(0, tdev.size);
    assert.equal(before.primary, 'primary-a');
    // an unrelated primary (its own lineage, its own data) tries to take the volume over
    const rogueDev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
    await rogueDev.write(0, Buffer.alloc(64 * KiB, 0xbb));
    await assert.rejects(
      createPrimary({ transport: network.transport({ host: '10.11.0.3' }), peer: t.address, nodeId: 'rogue', connections: 2, volumes: [{ name: 'v', device: rogueDev, mode: 'sync' }], ...LINK }),
      { code: 'BM_ERR_SPLIT_BRAIN' },
    );
    const after = t.status().volumes.v!;
    assert.deepEqual(
      { appliedSeq: after.appliedSeq, generation: after.generation, primary: after.primary, appliedWrites: after.appliedWrites },
      { appliedSeq: before.appliedSeq, generation: before.generation, primary: before.primary, appliedWrites: before.appliedWrites },
      'the refused peer changed nothing on the target volume',
    );
    assert.equal((await tdev.read(0, tdev.size)).equals(imageBefore), true, 'image unchanged');
    // the real primary comes back: its resend of W4 is not applied over W5
    network.heal(P, T);
    await waitFor(p, () => p.link === 'up' && v.state === 'in-sync');
    assert.ok((await tdev.read(0, 4 * KiB)).every((b) => b === 0x55), 'the newest write holds the block');
    assert.equal(await same(pdev, tdev), true, 'identical images');
    assert.equal(t.status().volumes.v!.primary, 'primary-a');
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

/** One turn of the event loop (pending I/O callbacks and microtasks run; no wall-clock wait). */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

test('issue 11 (4): SPEC 15: a sync write that fails locally rejects; the volume is not in-sync until a resync copied its range; a later overlapping acknowledged write is not overwritten on the target by the failed one', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const inner = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const pdev = new FaultyBlockDevice(inner);
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const slotLinks = linksBySlot(network, t);
  const p = await primary(network, t, pdev, 'sync', { connections: 2, durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    assert.equal((await v.write(32 * KiB, Buffer.alloc(4 * KiB, 9))).mirror, 'acknowledged');
    await waitFor(p, () => v.state === 'in-sync');
    const states: string[] = [];
    let resynced = false;
    p.on('volume-state', (e) => states.push(`${e.state}${resynced ? '' : ' (before resync-done)'}`));
    p.on('resync-done', () => (resynced = true));
    // F reaches the target only later (its connection holds it); locally it fails
    for (const link of network.links) link.stall('aToB');
    pdev.addFault({ op: 'write', range: { offset: 0, length: 8 * KiB }, times: 1, error: 'EIO' });
    await assert.rejects(v.write(0, Buffer.alloc(8 * KiB, 0xf0)), { code: 'BM_ERR_IO' });
    const fSlot = p.status().peers[0]!.connections.findIndex((c) => c.inFlight > 0);
    assert.notEqual(fSlot, -1, 'F was sent before its local write failed');
    for (const [slot, link] of slotLinks) if (slot !== fSlot) link.unstall('aToB');
    // L overlaps F; it is acknowledged only after the target applied F before it
    const lastBeforeL = v.status().lastSeq;
    const l = v.write(4 * KiB, Buffer.alloc(8 * KiB, 0x1b));
    const inFlight = (): number => p.status().peers[0]!.connections.reduce((n, c) => n + c.inFlight, 0);
    while (v.status().lastSeq <= lastBeforeL || inFlight() < v.status().pendingRequests) await turn();
    // F arrives last on the target
    slotLinks.get(fSlot)!.unstall('aToB');
    assert.equal((await l).mirror, 'acknowledged');
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(resynced, true, `the first in-sync after the failure comes after a resync (states: ${states.join(', ')})`);
    assert.deepEqual(
      states.filter((s) => s.startsWith('in-sync') && s.endsWith('(before resync-done)')),
      [],
      `never in-sync before the resync copied F's range (states: ${states.join(', ')})`,
    );
    assert.ok((await tdev.read(4 * KiB, 8 * KiB)).every((b) => b === 0x1b), 'L holds its range on the target');
    assert.equal(await same(inner, tdev), true, 'identical images');
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

/** A gate a test opens: `wait()` resolves once it is open (at once when it is). */
class Gate {
  #open = true;
  #waiters: Array<() => void> = [];
  waiting = 0;
  #onWait: Array<() => void> = [];
  hold(): void {
    this.#open = false;
  }
  release(): void {
    this.#open = true;
    for (const w of this.#waiters.splice(0)) w();
  }
  async wait(): Promise<void> {
    if (this.#open) return;
    this.waiting++;
    for (const w of this.#onWait.splice(0)) w();
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
    this.waiting--;
  }
  /** Resolves once something waits at the gate. */
  async someoneWaits(): Promise<void> {
    while (this.waiting === 0) await new Promise<void>((resolve) => this.#onWait.push(resolve));
  }
}

/** A memory device whose flushes can be held at a gate. */
class FlushGatedDevice extends WrappedDevice {
  readonly flushGate = new Gate();
  flushes = 0;
  writes = 0;
  constructor() {
    super(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  }
  override async write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    await this.inner.write(offset, data, options);
    this.writes++;
  }
  override async flush(): Promise<void> {
    await this.flushGate.wait();
    await this.inner.flush();
    this.flushes++;
  }
}

/** A memory journal whose appends can be held at a gate (a slow journal disk). */
class GatedJournal implements Journal {
  readonly inner = new MemoryJournal({ capacityBytes: 16 << 20 });
  readonly gate = new Gate();
  async append(entry: JournalEntry): Promise<void> {
    const accepted = this.inner.append(entry);
    await this.gate.wait();
    await accepted;
  }
  release(seq: number): void {
    this.inner.release(seq);
  }
  pending(afterSeq?: number): AsyncIterable<PendingJournalEntry> {
    return this.inner.pending(afterSeq);
  }
  get size(): number {
    return this.inner.size;
  }
  get pendingBytes(): number {
    return this.inner.pendingBytes;
  }
  get lastSeq(): number {
    return this.inner.lastSeq;
  }
  stats(): JournalStats {
    return this.inner.stats();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Turns the event loop until `cond` holds (bounded by the test's timeout). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await turn();
}

/** A primary with an injected (gated) journal, attached as `Primary.start()` attaches a file journal. */
async function primaryWithJournal(network: MemoryNetwork, t: MirrorTarget, device: BlockDevice, journal: Journal, mode: 'sync' | 'async', extra: Partial<PrimaryOptions> = {}): Promise<Primary> {
  const p = new Primary({
    transport: network.transport({ host: P }),
    peer: t.address,
    nodeId: 'primary-a',
    retryDelay: { min: 1, max: 20 },
    // both images start blank, i.e. identical: no initial sync (as --assume-clean)
    volumes: [{ name: 'v', device, mode, initialSync: 'none' }],
    ...LINK,
    ...extra,
  });
  const v = p.volume('v');
  await v.useJournal(journal, { id: newStreamId(), reserved: 0, continued: false }, async () => undefined, true);
  // as with a journal directory: the write-intent bitmap survives a crash (so its bits wait for the primary's own flush)
  v.useBitmap(new MemoryDirtyBitmap({ volumeSize: v.size, regionSize: 64 * 1024 }));
  await p.start(true);
  return p;
}

test('issue 11 (6): SPEC 18: an async write keeps its write-intent bit until the target holds it durably AND the primary flushed it (its journal append still pending)', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new FlushGatedDevice();
  const tdev = new FlushGatedDevice();
  const t = await target(network, tdev);
  const journal = new GatedJournal();
  const p = await primaryWithJournal(network, t, pdev, journal, 'async', { durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    const offset = 3 * 64 * KiB;
    const region = v.bitmap.regionIndex(offset);
    // an earlier write B to another region: its ack will arrive while A's journal append is pending
    for (const link of network.links) link.stall('bToA');
    const b = await v.write(0, Buffer.alloc(4 * KiB, 0xb));
    assert.equal(b.mirror, 'queued');
    journal.gate.hold();
    pdev.flushGate.hold();
    tdev.flushGate.hold();
    const w = v.write(offset, Buffer.alloc(4 * KiB, 6));
    await until(() => pdev.writes === 2);
    assert.equal(v.bitmap.isDirty(region), true, 'dirty once A is on the local disk');
    // B's ack arrives (unrelated to A): nothing may clear A's bit
    for (const link of network.links) link.unstall('bToA');
    await until(() => v.ackedSeq >= b.seq!);
    assert.equal(v.bitmap.isDirty(region), true, "still dirty after B's ack (A's journal append pending, nothing durable)");
    await until(() => v.ackedSeq >= b.seq! + 1);
    assert.equal(v.bitmap.isDirty(region), true, "still dirty after A's own ack (journal append pending, nothing durable)");
    // the idle volume asks the target to make it durable; the target's flush is held
    await tdev.flushGate.someoneWaits();
    assert.equal(v.bitmap.isDirty(region), true, 'still dirty while the target flush runs');
    tdev.flushGate.release();
    await until(() => v.durableSeq >= b.seq! + 1);
    assert.equal(v.bitmap.isDirty(region), true, 'durable on the target, but the primary has not flushed its own write');
    await pdev.flushGate.someoneWaits();
    pdev.flushGate.release();
    await until(() => !v.bitmap.isDirty(region));
    assert.ok(pdev.flushes >= 1, 'cleared only after the primary flush');
    journal.gate.release();
    assert.equal((await w).mirror, 'queued');
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true);
  } finally {
    journal.gate.release();
    pdev.flushGate.release();
    tdev.flushGate.release();
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (6): SPEC 18: an async write keeps its write-intent bit until its journal append completed AND the primary flushed it (the target never reports it durable)', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new FlushGatedDevice();
  const tdev = new FlushGatedDevice();
  const t = await target(network, tdev);
  const journal = new GatedJournal();
  const p = await primaryWithJournal(network, t, pdev, journal, 'async', { durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    const offset = 5 * 64 * KiB;
    const region = v.bitmap.regionIndex(offset);
    journal.gate.hold();
    pdev.flushGate.hold();
    tdev.flushGate.hold();
    const w = v.write(offset, Buffer.alloc(4 * KiB, 7));
    await until(() => v.ackedSeq >= 1);
    assert.equal(v.bitmap.isDirty(region), true, 'acknowledged, journal append pending: dirty');
    await pdev.flushGate.someoneWaits();
    // the journal append completes: the journal covers the write, but the primary's own write is not flushed
    journal.gate.release();
    assert.equal((await w).mirror, 'queued');
    for (let i = 0; i < 5; i++) await turn();
    assert.equal(v.bitmap.isDirty(region), true, 'journaled, but the local write is not durable yet');
    pdev.flushGate.release();
    await until(() => !v.bitmap.isDirty(region));
    assert.equal(v.durableSeq, 0, 'cleared with the target flush still held: the journal covers it');
    tdev.flushGate.release();
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true);
  } finally {
    journal.gate.release();
    pdev.flushGate.release();
    tdev.flushGate.release();
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (7): SPEC 19: the acknowledged prefix is exact: while the ack of seq k is held, later seqs are acknowledged and ackedSeq stays k - 1; after a cut k is resent and the prefix moves on', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const slotLinks = linksBySlot(network, t);
  const p = await primary(network, t, pdev, 'sync', { connections: 4, durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    for (let i = 0; i < 3; i++) assert.equal((await v.write(i * 4 * KiB, Buffer.alloc(4 * KiB, 1 + i))).mirror, 'acknowledged');
    const k = v.status().lastSeq + 1;
    assert.equal(v.ackedSeq, k - 1);
    // seq k: applied on the target, its ack held on its connection
    for (const link of network.links) link.stall('bToA');
    const wk = v.write(16 * KiB, Buffer.alloc(4 * KiB, 0x77));
    await until(() => p.status().peers[0]!.connections.some((c) => c.inFlight > 0));
    const kSlot = p.status().peers[0]!.connections.findIndex((c) => c.inFlight > 0);
    for (const [slot, link] of slotLinks) if (slot !== kSlot) link.unstall('bToA');
    // k + 1 … k + 3 go out on the other connections, one per tick, and are acknowledged
    const later: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await v.write((20 + 4 * i) * KiB, Buffer.alloc(4 * KiB, 0x80 + i));
      assert.equal(r.mirror, 'acknowledged');
      assert.ok(r.seq! > k);
      later.push(r.seq!);
      assert.equal(v.ackedSeq, k - 1, `ackedSeq ${v.ackedSeq} stays below the unacknowledged seq ${k} (acknowledged: ${later.join(',')})`);
      assert.equal(v.status().ackedSeq, k - 1);
    }
    // the connection carrying k's ack breaks: k is resent, applied at most once, and the prefix moves on
    slotLinks.get(kSlot)!.cut();
    // (the cut takes the link down for a moment: the degrade policy may tell k's caller `failed`; k stays queued)
    assert.ok(['acknowledged', 'failed'].includes((await wk).mirror));
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(v.ackedSeq, Math.max(...later));
    assert.equal(await same(pdev, tdev), true);
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (7): SPEC 19: the acknowledged prefix is exact while an async write has its seq and its journal append is pending and a resync write takes the next seq', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const journal = new GatedJournal();
  const p = await primaryWithJournal(network, t, pdev, journal, 'async', { durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    assert.equal((await v.write(0, Buffer.alloc(4 * KiB, 1))).mirror, 'queued');
    await waitFor(p, () => v.state === 'in-sync');
    const k = v.status().lastSeq + 1;
    assert.equal(v.ackedSeq, k - 1);
    // nothing reaches the target for now: nothing new can be acknowledged
    for (const link of network.links) link.stall('aToB');
    journal.gate.hold();
    const a = v.write(64 * KiB, Buffer.alloc(4 * KiB, 0xa));
    await until(() => v.status().lastSeq >= k);
    // a resync of another region takes seq k + 1 while A's journal append is pending
    v.markForResync(4 * 64 * KiB, 64 * KiB);
    await until(() => v.status().lastSeq >= k + 1);
    for (let i = 0; i < 5; i++) await turn();
    assert.equal(v.ackedSeq, k - 1, `ackedSeq ${v.ackedSeq} must not pass seq ${k}, which nobody acknowledged`);
    assert.equal(v.status().ackedSeq, k - 1);
    journal.gate.release();
    assert.equal((await a).mirror, 'queued');
    assert.equal(v.ackedSeq, k - 1);
    for (const link of network.links) link.unstall('aToB');
    await waitFor(p, () => v.state === 'in-sync');
    assert.ok(v.ackedSeq >= k + 1);
    assert.equal(await same(pdev, tdev), true);
  } finally {
    journal.gate.release();
    await p.close({ drain: false });
    await t.close();
  }
});

/** Resolves when the primary's link reaches `state`. */
async function linkState(p: Primary, state: string): Promise<void> {
  while (p.link !== state) await onceEvent(p, 'link');
}

test('issue 11 (8): SPEC 2/5: a slot never holds two connections: handshakes stalled when the link goes down are ended with it, the reopen connects each slot once, and replication continues with exactly n connections', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const n = 2;
  const p = await primary(network, t, pdev, 'sync', { connections: n, handshakeTimeout: 60_000 });
  const stalled: MemoryLink[] = [];
  let stallNew = false;
  network.on('link', (link) => {
    if (!stallNew) return;
    // the target's answers are held: the handshake of this connection hangs
    link.stall('bToA');
    stalled.push(link);
  });
  try {
    const v = p.volume('v');
    assert.equal((await v.write(0, Buffer.alloc(4 * KiB, 1))).mirror, 'acknowledged');
    const opened = network.connectionsOpened;
    stallNew = true;
    cutOff(network, P, T);
    await linkState(p, 'down');
    network.heal(P, T);
    // after the probation the slots reopen; their handshakes hang
    while (stalled.length < n) await onceEvent(network, 'link');
    stallNew = false;
    assert.deepEqual(p.status().peers[0]!.connections.map((c) => c.status), Array<string>(n).fill('connecting'));
    // the heartbeats stop and come back: another reopen while the handshakes still run
    network.partition(P, T);
    await linkState(p, 'down');
    network.heal(P, T);
    // the link went down: the stalled handshakes died with it (never left running beside a new one);
    // after the probation each slot connects once more
    for (const link of stalled) link.unstall('bToA');
    await linkState(p, 'up');
    assert.equal(network.connectionsOpened, opened + 2 * n, 'one new connection per slot after the second outage');
    assert.equal((await v.write(8 * KiB, Buffer.alloc(4 * KiB, 2))).mirror, 'acknowledged');
    await waitFor(p, () => v.state === 'in-sync');
    assert.equal(network.connectionsOpened, opened + 2 * n, 'exactly one connection per slot');
    assert.equal(t.status().volumes.v!.connections, n);
    assert.equal(t.status().peers.find((x) => x.node === 'primary-a')!.connections, n);
    assert.deepEqual(p.status().peers[0]!.connections.map((c) => c.status), Array<string>(n).fill('open'));
    assert.equal(await same(pdev, tdev), true);
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (10): SPEC 9: one connection, a window of 2, resync.concurrency 128, an async write pending (journal append held) while a resync runs, and a cut in the middle: no window deadlock, the pair reaches in-sync', BOUNDED, async () => {
  const size = 8 << 20;
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(size, { blockSize: 512 });
  for (let off = 0; off < size; off += 64 * KiB) await pdev.write(off, Buffer.alloc(64 * KiB, (off / (64 * KiB)) % 251));
  const tdev = new RecordingDevice(new MemoryBlockDevice(size, { blockSize: 512 }));
  const t = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
  const journal = new GatedJournal();
  const p = await primaryWithJournal(network, t, pdev, journal, 'async', { connections: 1, maxInFlightPerConnection: 2, resync: { concurrency: 128 } });
  try {
    const v = p.volume('v');
    // an async write whose journal append is pending when the resync writes (ordered after it) take their seqs
    journal.gate.hold();
    const a = v.write(3 * 64 * KiB + 4 * KiB, Buffer.alloc(4 * KiB, 0xaa));
    const k = v.status().lastSeq;
    await until(() => v.status().lastSeq >= 1);
    v.markForResync();
    await until(() => v.status().lastSeq >= k + 3);
    journal.gate.release();
    assert.equal((await a).mirror, 'queued');
    // more async writes while the resync runs; the link is cut once 40 writes reached the target
    let cut = false;
    tdev.on('op', (op) => {
      if (!cut && op.op === 'write' && tdev.count('write') === 40) {
        cut = true;
        cutOff(network, P, T);
        void linkState(p, 'down').then(() => network.heal(P, T));
      }
    });
    for (let i = 0; i < 16; i++) assert.equal((await v.write(((i * 37) % 128) * 64 * KiB + 8 * KiB, Buffer.alloc(4 * KiB, 0xc0 + i))).mirror, 'queued');
    await waitFor(p, () => cut && p.link === 'up' && v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true, 'identical images');
  } finally {
    journal.gate.release();
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (11): SPEC 18: sync volume, link down, journal full, many writes: RAM held for payloads stays within maxBufferedBytes; after heal a bitmap resync converges', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  const budget = 64 * KiB;
  const p = await primary(network, t, pdev, 'sync', { maxBufferedBytes: budget, journal: { capacityBytes: 32 * KiB } });
  try {
    const v = p.volume('v');
    const full: number[] = [];
    p.on('journal-full', (e) => full.push(e.seq));
    cutOff(network, P, T);
    await linkState(p, 'down');
    let peak = 0;
    for (let i = 0; i < 200; i++) {
      const r = await v.write(((i * 13) % 256) * 4 * KiB, Buffer.alloc(4 * KiB, 1 + (i % 250)));
      assert.equal(r.mirror, 'failed');
      peak = Math.max(peak, v.status().bufferedBytes);
      // nothing is in flight while the link is down: the budget alone bounds the payloads held
      assert.ok(v.status().bufferedBytes <= budget, `write ${i}: ${v.status().bufferedBytes} payload bytes held in RAM (budget ${budget})`);
    }
    assert.ok(full.length >= 1, 'the journal filled up');
    assert.ok(v.status().resyncBytes > 0, 'the bitmap took over');
    network.heal(P, T);
    await waitFor(p, () => p.link === 'up' && v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true, 'identical images');
    assert.ok(peak <= budget);
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 11 (6): SPEC 18: a checksum resync that finds a region equal on both sides keeps its write-intent bit until the primary flushed its own copy (a write of an earlier run may be in its page cache only)', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new FlushGatedDevice();
  const tdev = new FlushGatedDevice();
  const region = 4;
  const offset = region * 64 * KiB;
  // an earlier run wrote the block and the target got it; the primary's copy was never flushed
  const data = Buffer.alloc(4 * KiB, 0x5a);
  await pdev.inner.write(offset, data);
  await tdev.inner.write(offset, data);
  const t = await target(network, tdev);
  const p = new Primary({
    transport: network.transport({ host: P }),
    peer: t.address,
    nodeId: 'primary-a',
    retryDelay: { min: 1, max: 20 },
    volumes: [{ name: 'v', device: pdev, mode: 'sync', initialSync: 'none' }],
    resync: { checksum: true },
    durableInterval: 3_600_000,
    ...LINK,
  });
  try {
    const v = p.volume('v');
    await v.useJournal(new MemoryJournal({ capacityBytes: 1 << 20 }), { id: newStreamId(), reserved: 0, continued: false }, async () => undefined, true);
    // the bitmap the earlier run left: the region is dirty
    const bitmap = new MemoryDirtyBitmap({ volumeSize: v.size, regionSize: 64 * KiB });
    bitmap.mark(offset, data.length);
    v.useBitmap(bitmap);
    pdev.flushGate.hold();
    await p.start(true);
    await p.resync('v');
    assert.equal(v.status().resyncRegions, 0, 'nothing left to copy: the digests matched');
    assert.equal(bitmap.isDirty(region), true, 'the bit stays: the primary has not flushed its copy');
    await pdev.flushGate.someoneWaits();
    pdev.flushGate.release();
    await until(() => !bitmap.isDirty(region));
    assert.ok(pdev.flushes >= 1, 'cleared only after the primary flush');
  } finally {
    pdev.flushGate.release();
    await p.close({ drain: false });
    await t.close();
  }
});

/** A target's apply state that stops recording at some point (what a power loss would leave behind). */
class FrozenApplyState extends MemoryApplyStateStore {
  frozen = false;

  override async save(state: ApplyState): Promise<void> {
    if (!this.frozen) await super.save(state);
  }
}

test('issue 11 (I1): SPEC 13: a sync write split into frames whose first part the target acknowledged and then lost (restart before its apply state was durable) is not acknowledged as a whole; a resync copies the part and the pair converges', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  // the target's lineage survives its restart; its apply state is lost from part 1 on (as by a power loss)
  const pair = new MemoryPairStateStore();
  const state = new FrozenApplyState();
  let t = await target(network, tdev, { applyState: state, state: pair });
  const port = t.address.port;
  // one frame carries 64 KiB: a 128 KiB write goes in two parts, the second sent once the first is answered;
  // writes wait through the target's restart (suspend) instead of failing when the link goes down
  const p = await primary(network, t, pdev, 'sync', { limits: { maxPayloadLength: 64 * KiB + 512 }, durableInterval: 3_600_000, outagePolicy: 'suspend' });
  try {
    const v = p.volume('v');
    const offset = 256 * KiB;
    // once the target applied part 1, nothing more reaches it: part 1's ack returns, part 2 stays on the wire
    const part1 = writeDone(tdev, offset).then(() => {
      for (const link of network.links) link.stall('aToB');
    });
    state.frozen = true;
    const w = v.write(offset, Buffer.alloc(128 * KiB, 0x5c));
    await part1;
    await until(() => v.ackedSeq >= 1);
    // the target restarts on the same disk without having recorded part 1: it may be gone for all the primary knows
    await t.close();
    t = await target(network, tdev, { applyState: state, state: pair }, port);
    const r = await w;
    assert.equal(r.mirror, 'failed', 'a part the target lost before the write completed: not acknowledged');
    assert.equal(r.error?.code, 'BM_ERR_MIRROR_WRITE_FAILED');
    await waitFor(p, () => p.link === 'up' && v.state === 'in-sync');
    assert.ok((await tdev.read(offset, 128 * KiB)).every((b) => b === 0x5c), 'the resync brought the whole write');
    assert.equal(await same(pdev, tdev), true, 'identical images');
  } finally {
    await p.close();
    await t.close();
  }
});

test('issue 11 (11): SPEC 18: sync writes whose caller gave up while they were in flight, with the journal full, drop their copies once over maxBufferedBytes; when their connection closes they are resent as skips and a resync brings their ranges', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const t = await target(network, tdev);
  // a budget of 16 KiB, callers that give up after 100 ms, a journal too small for any of the writes
  const p = await primary(network, t, pdev, 'sync', { maxBufferedBytes: 16 * KiB, mirrorTimeout: 100, journal: { capacityBytes: 4 * KiB } });
  try {
    const v = p.volume('v');
    // the target's answers are held: the writes stay in flight
    for (const link of network.links) link.stall('bToA');
    // the first degraded write fills the journal (its record does not fit): the journal is suspended
    const journalFull = onceEvent(p, 'journal-full');
    assert.equal((await v.write(512 * KiB, Buffer.alloc(8 * KiB, 0x2f))).mirror, 'failed');
    await journalFull;
    const results = await Promise.all([0, 1, 2, 3].map((i) => v.write(i * 64 * KiB, Buffer.alloc(8 * KiB, 0x30 + i))));
    assert.ok(results.every((r) => r.mirror === 'failed'), 'every caller was told the mirror failed');
    assert.equal(v.status().bufferedBytes, 0, '40 KiB in flight for nobody, over a 16 KiB budget: no copy kept');
    // their connections close (the answers never come): resent as skips, their ranges resynced
    cutOff(network, P, T);
    network.heal(P, T);
    await waitFor(p, () => p.link === 'up' && v.state === 'in-sync');
    assert.equal(await same(pdev, tdev), true, 'identical images');
  } finally {
    await p.close();
    await t.close();
  }
});

test('issue 11: SPEC 19: 64 MiB of acknowledged writes make the primary ask the target for durability at once (no durableInterval, no idle delay), and not before', BOUNDED, async () => {
  const MiB = 1024 * KiB;
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(80 * MiB, { blockSize: 4096 });
  const tdev = new MemoryBlockDevice(80 * MiB, { blockSize: 4096 });
  const t = await target(network, tdev);
  const p = await primary(network, t, pdev, 'sync', { durableDelay: 3_600_000, durableInterval: 3_600_000 });
  try {
    const v = p.volume('v');
    let last = 0;
    for (let i = 0; i < 63; i++) last = (await v.write(i * MiB, Buffer.alloc(MiB, 1 + i))).seq!;
    for (let i = 0; i < 20; i++) await new Promise<void>((resolve) => setImmediate(resolve));
    assert.equal(v.durableSeq, 0, '63 MiB acknowledged: no durability flush asked yet');
    last = (await v.write(63 * MiB, Buffer.alloc(MiB, 64))).seq!;
    await until(() => v.durableSeq >= last);
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});
