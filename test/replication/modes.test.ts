import { WrappedDevice } from '../helpers/wrapped-device.js';
import { test } from 'node:test';
import { onceEvent as once } from '../helpers/events.js';
import assert from 'node:assert/strict';

import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { WriteOptions } from '../../src/device/block-device.js';
import { FaultyBlockDevice } from '../../src/device/faulty-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { imagesEqual, startPair, turn } from '../helpers/pair.js';
import { cutOff } from '../helpers/network.js';

const KiB = 1024;

test('SPEC 10: async mode resolves the host write before the mirror responds', async () => {
  const held = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair([{ name: 'v', mode: 'async', targetDevice: held, initialSync: 'none' }]);
  try {
    held.hold();
    const heldSeen = once(held, 'held');
    const result = await pair.primary.volume('v').write(0, Buffer.alloc(4 * KiB, 7));
    assert.equal(result.mirror, 'queued');
    await heldSeen; // the target has the request but has not written it
    assert.equal((await held.inner.read(0, 4 * KiB)).every((b) => b === 0), true, 'target not yet written');
    assert.equal(pair.primary.volume('v').status().inSync, false);
    held.release();
    await pair.primary.drain();
    assert.equal(await imagesEqual(pair, 'v'), true);
    assert.equal(pair.primary.volume('v').status().state, 'in-sync');
  } finally {
    held.release();
    await pair.close();
  }
});

test('SPEC 10: sync mode resolves the host write only after the mirror response, and reports it', async () => {
  const held = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const local = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair([{ name: 'v', mode: 'sync', targetDevice: held, primaryDevice: local }]);
  try {
    held.hold();
    let settled = false;
    const localDone = once(local, 'done');
    const targetHeld = once(held, 'held');
    const write = pair.primary.volume('v').write(8 * KiB, Buffer.alloc(4 * KiB, 9)).finally(() => {
      settled = true;
    });
    await Promise.all([localDone, targetHeld]);
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(settled, false, 'the local write is done, the mirror is held: the write must still be pending');
    held.release();
    const result = await write;
    assert.equal(result.mirror, 'acknowledged');
    assert.equal(typeof result.seq, 'number');
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    held.release();
    await pair.close();
  }
});

test('SPEC 11: a volume not designated for mirroring is written locally only; no bytes are sent', async () => {
  const network = new MemoryNetwork();
  const target = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair(
    [
      { name: 'm', mode: 'sync' },
      { name: 'l', mode: 'local', targetDevice: target },
    ],
    {
      target: { transport: network.transport({ host: '10.0.0.2' }), listen: { host: '10.0.0.2', port: 0 } },
      primary: { transport: network.transport({ host: '10.0.0.1' }) },
    },
  );
  try {
    const before = network.bytesSent;
    const v = pair.primary.volume('l');
    const result = await v.write(0, Buffer.alloc(64 * KiB, 1));
    assert.equal(result.mirror, 'not-mirrored');
    assert.equal((await v.flush()).mirror, 'not-mirrored');
    assert.equal((await v.zero(0, 4 * KiB)).mirror, 'not-mirrored');
    assert.equal(network.bytesSent, before, 'not a byte on the wire');
    assert.equal(target.count('write'), 0);
    assert.equal(pair.primary.status().volumes.l!.state, 'local');
    assert.equal((await pair.devices.get('l')!.primary.read(64 * KiB - 512, 512))[0], 1);
    // the mirrored volume beside it does send
    await pair.primary.volume('m').write(0, Buffer.alloc(4 * KiB, 2));
    assert.ok(network.bytesSent > before + 4 * KiB);
  } finally {
    await pair.close();
  }
});

test('a mirror write that fails with EIO is reported, stays queued and is retried until it lands', async () => {
  const faulty = new FaultyBlockDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  faulty.addFault({ op: 'write', range: { offset: 0, length: 4096 }, error: 'EIO', times: 2 });
  const pair = await startPair([{ name: 'v', mode: 'sync', targetDevice: faulty, initialSync: 'none' }], {
    primary: { retryDelay: { min: 1, max: 5 } },
  });
  try {
    const errors: string[] = [];
    pair.primary.on('mirror-error', (e) => errors.push(`${e.volume}:${e.error.code}`));
    const result = await pair.primary.volume('v').write(0, Buffer.alloc(4096, 0xee));
    assert.equal(result.mirror, 'failed');
    assert.equal(result.error?.code, 'BM_ERR_IO');
    assert.equal(pair.primary.volume('v').status().state, 'lagging');
    assert.equal(pair.primary.volume('v').status().lastError?.code, 'BM_ERR_IO');
    await pair.primary.drain(10000);
    assert.deepEqual(errors, ['v:BM_ERR_IO', 'v:BM_ERR_IO']);
    assert.equal(pair.primary.volume('v').status().state, 'in-sync');
    assert.equal(pair.primary.volume('v').status().mirrorErrors, 2);
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    await pair.close();
  }
});

test('flush and FUA are carried end to end in sync mode', async () => {
  const target = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair([{ name: 'v', mode: 'sync', targetDevice: target }]);
  try {
    await pair.primary.volume('v').write(0, Buffer.alloc(4096, 1), { fua: true });
    assert.equal(target.ops.find((o) => o.op === 'write')?.fua, true);
    await pair.primary.volume('v').write(4096, Buffer.alloc(4096, 2));
    assert.equal(target.ops.filter((o) => o.op === 'write')[1]?.fua, false);
    const flushes = target.count('flush');
    const r = await pair.primary.volume('v').flush();
    assert.equal(r.mirror, 'acknowledged');
    // the volume also asks for durability flushes of its own when it goes idle
    assert.ok(target.count('flush') >= flushes + 1);
    assert.equal(target.ops.at(-1)?.op, 'flush', 'the target flushed after the last write');
  } finally {
    await pair.close();
  }
});

test('an async flush reaches the target after the writes it covers', async () => {
  const target = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair([{ name: 'v', mode: 'async', targetDevice: target }]);
  try {
    target.hold();
    for (let i = 0; i < 8; i++) await pair.primary.volume('v').write(i * 4096, Buffer.alloc(4096, i + 1));
    const r = await pair.primary.volume('v').flush();
    assert.equal(r.mirror, 'queued');
    target.release();
    await pair.primary.drain();
    const order = target.ops.map((o) => o.op);
    assert.equal(order.lastIndexOf('write') < order.indexOf('flush'), true, `flush after all writes: ${order.join(',')}`);
  } finally {
    target.release();
    await pair.close();
  }
});

test('zero (trim / write-zeroes) is mirrored in order with writes', async () => {
  const pair = await startPair([{ name: 'v', mode: 'async' }]);
  try {
    const v = pair.primary.volume('v');
    await v.write(0, Buffer.alloc(64 * KiB, 0x55));
    await v.zero(4 * KiB, 8 * KiB);
    await v.write(8 * KiB, Buffer.alloc(4 * KiB, 0x66));
    await pair.primary.drain();
    assert.equal(await imagesEqual(pair, 'v'), true);
    const t = await pair.devices.get('v')!.target.read(0, 16 * KiB);
    assert.equal(t[4 * KiB], 0);
    assert.equal(t[8 * KiB], 0x66);
    assert.equal(t[12 * KiB], 0x55);
  } finally {
    await pair.close();
  }
});

test('requests out of range or misaligned are refused before anything is written or sent', async () => {
  const target = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const pair = await startPair([{ name: 'v', mode: 'sync', targetDevice: target }]);
  try {
    const v = pair.primary.volume('v');
    // the initial sync of the blank volume (a zero range: nothing written on the target) ends first
    await pair.primary.drain();
    const seq = v.status().lastSeq;
    await assert.rejects(v.write(1 << 20, Buffer.alloc(512)), { code: 'BM_ERR_OUT_OF_RANGE' });
    await assert.rejects(v.write(100, Buffer.alloc(512)), { code: 'BM_ERR_MISALIGNED' });
    await assert.rejects(v.write(-512, Buffer.alloc(512)), { code: 'BM_ERR_INVALID_ARGUMENT' });
    await assert.rejects(v.zero(0, (1 << 20) + 512), { code: 'BM_ERR_OUT_OF_RANGE' });
    assert.equal(target.count('write'), 0);
    assert.equal(v.status().lastSeq, seq);
  } finally {
    await pair.close();
  }
});

test('async back-pressure: with maxAsyncLag, writes wait while that many bytes wait for the target (link up), and never while the link is down', async () => {
  const held = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const network = new MemoryNetwork();
  const link = { heartbeatInterval: 10, staleAfter: 60, probation: 20 };
  const pair = await startPair([{ name: 'v', mode: 'async', targetDevice: held }], {
    target: { transport: network.transport({ host: '10.9.0.2' }), listen: { host: '10.9.0.2', port: 0 }, ...link },
    primary: { transport: network.transport({ host: '10.9.0.1' }), maxAsyncLag: 64 * KiB, ...link },
  });
  try {
    held.hold();
    let resolved = 0;
    const writes = Array.from({ length: 32 }, (_, i) => pair.primary.volume('v').write(i * 4 * KiB, Buffer.alloc(4 * KiB, i + 1)).then(() => resolved++));
    // the target's device holds every write that reaches it: no acknowledgement comes back
    await once(held, 'held');
    for (let i = 0; i < 200 && resolved < 16; i++) await turn();
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(resolved, 16, '64 KiB of 4 KiB writes admitted, the rest wait for acknowledgements');
    held.release();
    await Promise.all(writes);
    await pair.primary.drain();
    assert.equal(await imagesEqual(pair, 'v'), true);
    // link down: the journal absorbs, nobody waits
    cutOff(network, '10.9.0.1', '10.9.0.2');
    while (pair.primary.link !== 'down') await once(pair.primary, 'link');
    for (let i = 0; i < 64; i++) await pair.primary.volume('v').write(i * 4 * KiB, Buffer.alloc(4 * KiB, 0xcc));
    assert.ok(pair.primary.volume('v').status().pendingBytes >= 256 * KiB);
    network.heal('10.9.0.1', '10.9.0.2');
    await pair.primary.drain(20000);
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    held.release();
    await pair.close();
  }
});

/** A target device whose writes wait until the test lets them through, one at a time. */
class SteppedDevice extends WrappedDevice {
  readonly #held: Array<() => void> = [];
  constructor() {
    super(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  }
  get held(): number {
    return this.#held.length;
  }
  override async write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    await new Promise<void>((resolve) => this.#held.push(resolve));
    await this.inner.write(offset, data, options);
  }
  /** Lets the oldest held write through. */
  step(): void {
    this.#held.shift()?.();
  }
}

test('async back-pressure admits waiting writes one by one as acknowledgements free room: the lag never exceeds maxAsyncLag', async () => {
  const stepped = new SteppedDevice();
  const network = new MemoryNetwork();
  const pair = await startPair([{ name: 'v', mode: 'async', targetDevice: stepped }], {
    target: { transport: network.transport({ host: '10.9.2.2' }), listen: { host: '10.9.2.2', port: 0 }, heartbeats: false },
    primary: { transport: network.transport({ host: '10.9.2.1' }), maxAsyncLag: 16 * KiB, heartbeats: false },
  });
  try {
    const v = pair.primary.volume('v');
    let resolved = 0;
    const writes = Array.from({ length: 32 }, (_, i) => v.write(i * 4 * KiB, Buffer.alloc(4 * KiB, i + 1)).then(() => resolved++));
    const settle = async (): Promise<void> => {
      for (let i = 0; i < 20; i++) await turn();
    };
    await settle();
    assert.equal(resolved, 4, '16 KiB of 4 KiB writes admitted');
    assert.equal(stepped.held, 4, 'concurrent writes all reach the target (no order among them)');
    // each acknowledgement frees room for exactly one more write
    for (let acked = 1; acked <= 28; acked++) {
      stepped.step();
      await settle();
      assert.equal(resolved, 4 + acked, `after ${acked} acknowledgement(s)`);
      assert.ok(v.status().pendingBytes <= 16 * KiB, `at most maxAsyncLag bytes wait for the target (${v.status().pendingBytes})`);
    }
    while (stepped.held > 0 || resolved < 32) {
      stepped.step();
      await turn();
    }
    await Promise.all(writes);
    const drained = pair.primary.drain();
    while (!v.idle) {
      stepped.step();
      await turn();
    }
    await drained;
    assert.equal(await imagesEqual(pair, 'v'), true);
  } finally {
    while (stepped.held > 0) stepped.step();
    await pair.close();
  }
});

test('async writes copy the caller\'s buffer unless it is handed over with transfer: true', async () => {
  const network = new MemoryNetwork();
  const link = { heartbeatInterval: 10, staleAfter: 60, probation: 20 };
  const pair = await startPair([{ name: 'v', mode: 'async' }], {
    target: { transport: network.transport({ host: '10.9.1.2' }), listen: { host: '10.9.1.2', port: 0 }, ...link },
    primary: { transport: network.transport({ host: '10.9.1.1' }), ...link },
  });
  try {
    // link down: the requests stay queued with whatever buffer the volume kept
    cutOff(network, '10.9.1.1', '10.9.1.2');
    while (pair.primary.link !== 'down') await once(pair.primary, 'link');
    const copied = Buffer.alloc(4 * KiB, 0x11);
    const handedOver = Buffer.alloc(4 * KiB, 0x22);
    const volume = pair.primary.volume('v');
    assert.equal((await volume.write(0, copied)).mirror, 'queued');
    assert.equal((await volume.write(8 * KiB, handedOver, { transfer: true })).mirror, 'queued');
    // a caller breaking the transfer contract shows that no copy was taken
    copied.fill(0x33);
    handedOver.fill(0x44);
    network.heal('10.9.1.1', '10.9.1.2');
    await pair.primary.drain(20000);
    const target = pair.target.volume('v');
    assert.equal((await target.read(0, 4 * KiB)).every((b) => b === 0x11), true, 'default: the volume mirrored its own copy');
    assert.equal((await target.read(8 * KiB, 4 * KiB)).every((b) => b === 0x44), true, 'transfer: the volume kept the caller\'s buffer');
  } finally {
    await pair.close();
  }
});
