import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createPrimary } from '../../src/replication/primary.js';
import { imagesEqual, startPair, type Pair } from '../helpers/pair.js';
import { onceEvent } from '../helpers/events.js';

const KiB = 1024;
const P = '10.0.0.1';
const T = '10.0.0.2';

/** Link timers at millisecond scale (the state machine's timing is tested in virtual time in test/link). */
export const FAST_LINK = { heartbeatInterval: 10, staleAfter: 60, probation: 30 };

async function networkPair(mode: 'sync' | 'async', extra: Parameters<typeof startPair>[1] = {}) {
  const network = new MemoryNetwork();
  const pair = await startPair([{ name: 'v', mode, size: 1 << 20 }], {
    target: { transport: network.transport({ host: T }), listen: { host: T, port: 0 }, ...FAST_LINK, ...extra.target },
    primary: { transport: network.transport({ host: P }), retryDelay: { min: 1, max: 20 }, ...FAST_LINK, ...extra.primary },
  });
  return { network, pair };
}

/** Cuts every connection between the two hosts and refuses new ones until healed. */
function partition(network: MemoryNetwork): void {
  network.partition(P, T);
  for (const link of network.links) if (!link.closed) link.cut();
}

async function waitState(pair: Pair, state: string): Promise<void> {
  const v = pair.primary.volume('v');
  while (v.state !== state) await onceEvent(v, 'state');
}

test('SPEC 7: writes accepted while the link is down are journaled, and replayed after it heals (async)', async () => {
  const { network, pair } = await networkPair('async');
  try {
    const v = pair.primary.volume('v');
    await v.write(0, Buffer.alloc(4 * KiB, 1));
    await pair.primary.drain();
    partition(network);
    await onceEvent(pair.primary, 'link');
    assert.equal(pair.primary.link, 'down');
    for (let i = 1; i <= 16; i++) assert.equal((await v.write(i * 4 * KiB, Buffer.alloc(4 * KiB, i + 1))).mirror, 'queued');
    assert.equal(v.status().journalEntries, 16);
    assert.equal(v.state, 'lagging');
    network.heal(P, T);
    await waitState(pair, 'in-sync');
    // journal records are released once the target reports them durable (its flush)
    await pair.primary.drain();
    assert.equal(v.status().journalEntries, 0, 'journal empty after replay');
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    await pair.close();
  }
});

test('SPEC 7: sync writes during an outage degrade: they complete locally once journaled and the volume lags', async () => {
  const { network, pair } = await networkPair('sync');
  try {
    const v = pair.primary.volume('v');
    partition(network);
    await onceEvent(pair.primary, 'link');
    const r = await v.write(0, Buffer.alloc(4 * KiB, 7));
    assert.equal(r.mirror, 'failed');
    assert.equal(r.error?.code, 'BM_ERR_CONNECTION_CLOSED');
    assert.equal(v.status().journalEntries, 1);
    assert.equal(v.state, 'lagging');
    network.heal(P, T);
    await waitState(pair, 'in-sync');
    assert.equal(await imagesEqual(pair, 'v'), true);
    await pair.primary.drain();
    assert.equal(v.status().journalEntries, 0);
  } finally {
    await pair.close();
  }
});

test('sync writes during an outage with outagePolicy suspend wait for the link, and fail with BM_ERR_TIMEOUT after mirrorTimeout', async () => {
  const { network, pair } = await networkPair('sync', { primary: { outagePolicy: 'suspend', mirrorTimeout: 200 } });
  try {
    const v = pair.primary.volume('v');
    partition(network);
    await onceEvent(pair.primary, 'link');
    let settled = false;
    const held = v.write(0, Buffer.alloc(4 * KiB, 3)).finally(() => (settled = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(settled, false);
    network.heal(P, T);
    assert.equal((await held).mirror, 'acknowledged', 'held until the link came back');
    partition(network);
    await onceEvent(pair.primary, 'link');
    await assert.rejects(v.write(4 * KiB, Buffer.alloc(4 * KiB, 4)), { code: 'BM_ERR_TIMEOUT' });
    assert.equal(v.status().journalEntries, 1, 'the failed write stays journaled');
    network.heal(P, T);
    await waitState(pair, 'in-sync');
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    await pair.close();
  }
});

test('SPEC 18: journal full while the link is down: writes still complete locally, journal-full fires, the bitmap takes over and a bitmap resync sends only the dirty regions', async () => {
  const { network, pair } = await networkPair('async', { primary: { journal: { capacityBytes: 16 * KiB } } });
  try {
    const v = pair.primary.volume('v');
    const full: number[] = [];
    pair.primary.on('journal-full', (e) => full.push(e.seq));
    partition(network);
    await onceEvent(pair.primary, 'link');
    const results = [];
    // 40 writes of 4 KiB into 10 regions of 64 KiB (4 each)
    for (let i = 0; i < 40; i++) results.push(await v.write(i * 16 * KiB, Buffer.alloc(4 * KiB, i + 1)));
    assert.equal(full.length, 1, 'one journal-full event');
    assert.equal(v.state, 'needs-resync');
    assert.ok(results.every((r) => r.mirror === 'queued' || (r.mirror === 'failed' && r.error?.code === 'BM_ERR_JOURNAL_FULL')));
    const local = await pair.devices.get('v')!.primary.read(39 * 16 * KiB, 4 * KiB);
    assert.equal(local[0], 40, 'local write done');
    const dirtyBytes = v.status().resyncBytes;
    assert.ok(dirtyBytes > 0 && dirtyBytes <= 10 * 64 * KiB);
    const sentBefore = network.streamBytesSent;
    const done = onceEvent<[{ bytesSent: number }]>(pair.primary, 'resync-done');
    network.heal(P, T);
    const [result] = await done;
    await waitState(pair, 'in-sync');
    assert.equal(await imagesEqual(pair, 'v'), true);
    assert.ok(result.bytesSent <= dirtyBytes, `resync sent ${result.bytesSent} bytes for ${dirtyBytes} dirty bytes`);
    const wire = network.streamBytesSent - sentBefore;
    // journaled writes (before the overflow) + the dirty regions + framing
    assert.ok(wire <= dirtyBytes + 16 * KiB + 64 * KiB, `bytes on the wire ${wire}`);
  } finally {
    await pair.close();
  }
});

test('SPEC 16/19: a restarted primary replays its file journal; the target ends with every acknowledged write', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-journal-'));
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const pair = await startPair([{ name: 'v', mode: 'async', size: 1 << 20, primaryDevice: pdev }], {
    target: { transport: network.transport({ host: T }), listen: { host: T, port: 0 }, ...FAST_LINK },
    primary: { transport: network.transport({ host: P }), retryDelay: { min: 1, max: 20 }, journal: { dir, fsync: 'always' }, ...FAST_LINK },
  });
  try {
    const v = pair.primary.volume('v');
    partition(network);
    await onceEvent(pair.primary, 'link');
    for (let i = 0; i < 10; i++) await v.write(i * 4 * KiB, Buffer.alloc(4 * KiB, 0x40 + i));
    assert.equal(v.status().journalEntries, 10);
    // the primary goes away without delivering (close without drain keeps the journal)
    await pair.primary.close({ drain: false });
    network.heal(P, T);
    const again = await createPrimary({
      transport: network.transport({ host: P }),
      peer: pair.target.address,
      journal: { dir, fsync: 'always' },
      volumes: [{ name: 'v', device: pdev, mode: 'async' }],
      ...FAST_LINK,
    });
    try {
      assert.ok(again.volume('v').status().lastSeq >= 10, 'sequence numbers continue after the journal');
      await again.drain();
      assert.equal(await imagesEqual(pair, 'v'), true);
      assert.equal(again.volume('v').status().journalEntries, 0);
    } finally {
      await again.close();
    }
  } finally {
    await pair.target.close();
    await rm(dir, { recursive: true, force: true });
  }
});
