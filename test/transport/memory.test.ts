import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import fc from 'fast-check';
import { clockFrom } from '../../src/clock.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { MemoryNetwork, seededRandom } from '../../src/transport/memory.js';
import type { DatagramFaults, MemoryLink, MemoryNetworkOptions } from '../../src/transport/memory.js';
import type { TransportConnection } from '../../src/transport/transport.js';
import { transportSuite } from '../../src/testing/transport-suite.js';

transportSuite({
  name: 'MemoryNetwork',
  create: async () => ({ transport: new MemoryNetwork().transport(), host: '127.0.0.1' }),
});

transportSuite({
  name: 'MemoryNetwork (highWaterMark 16 KiB)',
  create: async () => ({ transport: new MemoryNetwork({ highWaterMark: 16 * 1024 }).transport({ host: 'node-a' }), host: 'node-a' }),
});

transportSuite({
  name: 'MemoryNetwork (random 0-2 ms delay per chunk on every link)',
  create: async () => {
    const network = new MemoryNetwork();
    const random = seededRandom(7);
    network.on('link', (link) => link.setDelay(() => Math.floor(random() * 3)));
    return { transport: network.transport(), host: '127.0.0.1' };
  },
});

/** A few event-loop turns (lets real immediates run); not a timed sleep. */
async function turns(count = 5): Promise<void> {
  for (let i = 0; i < count; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function virtualNetwork(options: MemoryNetworkOptions = {}): { fake: FakeTimers.Clock; network: MemoryNetwork } {
  const fake = FakeTimers.createClock();
  return { fake, network: new MemoryNetwork({ clock: clockFrom(fake), ...options }) };
}

interface Recorder {
  chunks: Buffer[];
  times: number[];
  closes: (Error | undefined)[];
  drains: number;
  bytes(): number;
  data(): Buffer;
}

function record(connection: TransportConnection, now: () => number = () => 0): Recorder {
  const recorder: Recorder = {
    chunks: [],
    times: [],
    closes: [],
    drains: 0,
    bytes: () => recorder.chunks.reduce((sum, chunk) => sum + chunk.length, 0),
    data: () => Buffer.concat(recorder.chunks),
  };
  connection.on('data', (chunk) => {
    recorder.chunks.push(chunk);
    recorder.times.push(now());
  });
  connection.on('close', (error) => recorder.closes.push(error));
  connection.on('drain', () => recorder.drains++);
  return recorder;
}

async function pair(network: MemoryNetwork, clientHost = 'a', serverHost = 'b') {
  const clientTransport = network.transport({ host: clientHost });
  const serverTransport = network.transport({ host: serverHost });
  const listener = await serverTransport.listen({ host: serverHost, port: 0 });
  const accepted = new Promise<TransportConnection>((resolve) => listener.once('connection', resolve));
  const a = await clientTransport.connect(listener.address);
  const b = await accepted;
  const link = network.linkOf(a);
  assert.ok(link !== undefined);
  return {
    clientTransport,
    serverTransport,
    listener,
    a,
    b,
    link,
    close: async () => {
      a.destroy();
      b.destroy();
      await listener.close();
      await turns();
    },
  };
}

function closedWith(error: Error | undefined, code: 'BM_ERR_CONNECTION_CLOSED' | 'BM_ERR_CONNECT_FAILED'): boolean {
  return isBlockMirrorError(error, code);
}

describe('MemoryNetwork basics', () => {
  test('delivery is asynchronous, in order, one data event per chunk, copied at the boundary', async () => {
    const network = new MemoryNetwork();
    const p = await pair(network);
    const atB = record(p.b);
    const x = Buffer.from('xxxx');
    const y = new Uint8Array([1, 2, 3]);
    assert.equal(p.a.write([x, y]), true);
    assert.equal(atB.chunks.length, 0, 'nothing delivered inside write()');
    assert.equal(p.a.bufferedAmount, 7);
    x.fill(0); // the copy taken at write() is what travels
    await turns();
    assert.equal(atB.chunks.length, 2);
    assert.equal(atB.chunks[0]?.toString(), 'xxxx');
    assert.deepEqual(new Uint8Array(atB.chunks[1]!), y);
    assert.notEqual(atB.chunks[0], x, 'receiver gets its own buffer');
    assert.equal(p.a.bufferedAmount, 0);
    await p.close();
  });

  test('links: the link event comes first, linkOf() maps both ends, closed links leave network.links', async () => {
    const network = new MemoryNetwork();
    const order: string[] = [];
    let fromEvent: MemoryLink | undefined;
    network.on('link', (link) => {
      order.push('link');
      fromEvent = link;
    });
    const server = await network.transport({ host: 'b' }).listen({ host: 'b', port: 0 });
    server.on('connection', () => order.push('connection'));
    const a = await network.transport({ host: 'a' }).connect(server.address);
    order.push('connected');
    assert.deepEqual(order, ['link', 'connection', 'connected']);
    assert.ok(fromEvent !== undefined);
    assert.equal(fromEvent.a, a);
    assert.equal(network.linkOf(fromEvent.b), fromEvent);
    assert.deepEqual(network.links, [fromEvent]);
    assert.equal(network.connectionsOpened, 1);
    assert.equal(a.localAddress.host, 'a');
    assert.equal(a.remoteAddress.host, 'b');
    a.end();
    await turns();
    assert.equal(fromEvent.closed, true);
    assert.deepEqual(network.links, []);
    assert.equal(network.linkOf(a), fromEvent);
    await server.close();
  });

  test('ports: 0 assigns distinct free ports per host; busy → BM_ERR_ADDRESS_IN_USE; nobody → BM_ERR_CONNECT_FAILED (refused)', async () => {
    const network = new MemoryNetwork();
    const t = network.transport({ host: 'h' });
    const s1 = await t.listen({ host: 'h', port: 0 });
    const s2 = await t.listen({ host: 'h', port: 0 });
    assert.notEqual(s1.address.port, s2.address.port);
    const fixed = await t.listen({ host: 'h', port: 4000 });
    await assert.rejects(t.listen({ host: 'h', port: 4000 }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_ADDRESS_IN_USE'));
    const other = await t.listen({ host: 'other', port: 4000 });
    await assert.rejects(t.connect({ host: 'h', port: 4001 }), (e: unknown) => {
      assert.ok(isBlockMirrorError(e, 'BM_ERR_CONNECT_FAILED'));
      assert.equal(e.details.reason, 'refused');
      return true;
    });
    await Promise.all([s1.close(), s2.close(), fixed.close(), other.close()]);
    const again = await t.listen({ host: 'h', port: 4000 });
    await again.close();
  });

  test('destroy() sends a reset: the peer closes with BM_ERR_CONNECTION_CLOSED, even while paused', async () => {
    const network = new MemoryNetwork();
    const p = await pair(network);
    const atA = record(p.a);
    const atB = record(p.b);
    p.b.pause();
    p.a.write([Buffer.alloc(100)]);
    p.a.destroy();
    await turns();
    assert.deepEqual(atA.closes, [undefined]);
    assert.equal(atB.closes.length, 1);
    assert.ok(closedWith(atB.closes[0], 'BM_ERR_CONNECTION_CLOSED'));
    assert.equal(atB.chunks.length, 0, 'queued data of a destroyed connection is discarded');
    await p.close();
  });

  test('pause() stops delivery and the sender sees back-pressure; resume() delivers and drain fires', async () => {
    const network = new MemoryNetwork({ highWaterMark: 1000 });
    const p = await pair(network);
    const atA = record(p.a);
    const atB = record(p.b);
    p.b.pause();
    assert.equal(p.a.write([Buffer.alloc(800, 1)]), true);
    assert.equal(p.a.write([Buffer.alloc(800, 2)]), false, 'more than highWaterMark queued');
    assert.equal(p.a.bufferedAmount, 1600);
    await turns();
    assert.equal(atB.chunks.length, 0);
    assert.equal(atA.drains, 0);
    p.b.resume();
    await turns();
    assert.equal(atB.bytes(), 1600);
    assert.deepEqual(atB.data(), Buffer.concat([Buffer.alloc(800, 1), Buffer.alloc(800, 2)]));
    assert.equal(atA.drains, 1);
    await p.close();
  });

  test('byte counters per direction and network-wide; connecting and listening send no bytes', async () => {
    const network = new MemoryNetwork();
    assert.equal(network.bytesSent, 0);
    const p = await pair(network);
    assert.equal(network.bytesSent, 0, 'connect sends no bytes');
    p.a.write([Buffer.alloc(60), Buffer.alloc(40)]);
    p.b.write([Buffer.alloc(50)]);
    const t = network.transport({ host: 'a' });
    const u = await t.bindDatagram({ host: 'a', port: 0 });
    const v = await t.bindDatagram({ host: 'b', port: 0 });
    u.send(Buffer.alloc(10), v.address);
    await turns();
    assert.equal(p.link.bytesAtoB, 100);
    assert.equal(p.link.bytesBtoA, 50);
    assert.equal(p.link.aToB.bytesDelivered, 100);
    assert.equal(p.link.bToA.bytesDelivered, 50);
    assert.equal(p.link.aToB.bytesDropped, 0);
    assert.equal(network.streamBytesSent, 150);
    assert.equal(network.datagramBytesSent, 10);
    assert.equal(network.datagramsSent, 1);
    assert.equal(network.datagramsDelivered, 1);
    assert.equal(network.bytesSent, 160);
    await Promise.all([u.close(), v.close()]);
    await p.close();
  });

  test('invalid arguments are refused with BM_ERR_INVALID_ARGUMENT', async () => {
    const network = new MemoryNetwork();
    const p = await pair(network);
    const bad = (e: unknown): boolean => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT');
    assert.throws(() => p.link.setDelay(-1), bad);
    assert.throws(() => p.link.stall('sideways' as 'both'), bad);
    assert.throws(() => network.setDatagramFaults({ dropRate: 2 }), bad);
    assert.throws(() => new MemoryNetwork({ highWaterMark: Number.NaN }), bad);
    await assert.rejects(p.clientTransport.listen({ host: 'a', port: -1 }), bad);
    await p.close();
  });
});

describe('MemoryLink faults', () => {
  test('a constant delay (virtual time) applies per direction', async () => {
    const { fake, network } = virtualNetwork();
    const p = await pair(network);
    const atA = record(p.a, () => fake.now);
    const atB = record(p.b, () => fake.now);
    p.link.setDelay(100, 'aToB');
    p.a.write([Buffer.from('late')]);
    p.b.write([Buffer.from('prompt')]);
    await turns();
    assert.equal(atA.chunks.length, 1, 'bToA has no delay');
    await fake.tickAsync(99);
    assert.equal(atB.chunks.length, 0);
    await fake.tickAsync(1);
    assert.deepEqual(atB.times, [100]);
    assert.equal(atB.data().toString(), 'late');
    await p.close();
  });

  test('random per-chunk delays keep order; each chunk arrives at max(its due time, previous delivery)', async () => {
    const chunk = fc.record({ size: fc.integer({ min: 1, max: 3000 }), delay: fc.integer({ min: 0, max: 50 }), gap: fc.integer({ min: 0, max: 20 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(chunk, { minLength: 1, maxLength: 30 }), async (plan) => {
        const { fake, network } = virtualNetwork();
        const p = await pair(network);
        const atB = record(p.b, () => fake.now);
        const delays = plan.map((item) => item.delay);
        let next = 0;
        p.link.setDelay(() => delays[next++] ?? 0, 'aToB');
        const sent: Buffer[] = [];
        const expected: number[] = [];
        for (const [index, item] of plan.entries()) {
          const data = Buffer.alloc(item.size, index % 251);
          if (item.size >= 2) data.writeUInt16BE(index, 0);
          sent.push(data);
          expected.push(Math.max(fake.now + item.delay, expected.at(-1) ?? 0));
          p.a.write([data]);
          await fake.tickAsync(item.gap);
        }
        await turns();
        await fake.tickAsync(100);
        await turns();
        assert.equal(atB.chunks.length, plan.length, 'one data event per chunk');
        assert.deepEqual(atB.data(), Buffer.concat(sent));
        assert.deepEqual(atB.times, expected);
        await p.close();
      }),
      { numRuns: 60, seed: 20261127 },
    );
  });

  test('stall() holds traffic (counted against the high-water mark); unstall() releases it in order', async () => {
    const { fake, network } = virtualNetwork({ highWaterMark: 1000 });
    const p = await pair(network);
    const atA = record(p.a);
    const atB = record(p.b);
    p.link.stall('aToB');
    assert.equal(p.link.aToB.stalled, true);
    assert.equal(p.a.write([Buffer.alloc(600, 1)]), true);
    assert.equal(p.a.write([Buffer.alloc(600, 2)]), false);
    p.b.write([Buffer.from('other way')]);
    await turns();
    await fake.tickAsync(60_000);
    assert.equal(atB.chunks.length, 0, 'nothing crosses a stalled direction');
    assert.equal(atA.data().toString(), 'other way', 'the other direction flows');
    assert.equal(p.link.aToB.queuedBytes, 1200);
    p.link.unstall();
    await turns();
    assert.deepEqual(atB.data(), Buffer.concat([Buffer.alloc(600, 1), Buffer.alloc(600, 2)]));
    assert.equal(atA.drains, 1);
    await p.close();
  });

  test('blackhole() is silent: queued and new data vanish, neither side gets close from the other', async () => {
    const { fake, network } = virtualNetwork();
    const p = await pair(network);
    const atA = record(p.a);
    const atB = record(p.b);
    p.link.stall();
    p.a.write([Buffer.alloc(100)]);
    p.link.blackhole();
    p.link.unstall();
    p.a.write([Buffer.alloc(200)]);
    p.b.write([Buffer.alloc(300)]);
    p.a.end();
    await turns();
    await fake.tickAsync(3_600_000);
    assert.equal(atA.chunks.length + atB.chunks.length, 0);
    assert.deepEqual(atA.closes, [], 'end() never completes across a blackhole');
    assert.deepEqual(atB.closes, []);
    assert.equal(p.link.blackholed, true);
    assert.equal(p.link.aToB.bytesDropped, 300);
    assert.equal(p.link.bToA.bytesDropped, 300);
    p.b.destroy();
    await turns();
    assert.deepEqual(atB.closes, [undefined], 'local destroy still closes locally');
    assert.deepEqual(atA.closes, [], 'the reset is lost too');
    await p.close();
  });

  test('cut() closes both ends once with BM_ERR_CONNECTION_CLOSED; queued data is lost', async () => {
    const network = new MemoryNetwork();
    const p = await pair(network);
    const atA = record(p.a);
    const atB = record(p.b);
    p.link.stall();
    p.a.write([Buffer.alloc(10)]);
    const cause = new Error('cable pulled');
    p.link.cut(cause);
    assert.equal(p.a.closed, true);
    assert.equal(p.a.write([Buffer.alloc(1)]), false);
    p.link.unstall();
    await turns();
    assert.equal(atA.closes.length, 1);
    assert.equal(atB.closes.length, 1);
    for (const error of [atA.closes[0], atB.closes[0]]) {
      assert.ok(closedWith(error, 'BM_ERR_CONNECTION_CLOSED'));
      assert.equal(error?.cause, cause);
    }
    assert.equal(atB.chunks.length, 0);
    assert.equal(p.link.closed, true);
    assert.deepEqual(network.links, []);
    p.link.cut();
    await turns();
    assert.equal(atA.closes.length, 1);
    await p.close();
  });

  test('partition() refuses connects, blackholes existing links and drops datagrams; heal() restores new traffic only', async () => {
    const { fake, network } = virtualNetwork();
    const p = await pair(network, 'a', 'b');
    const atA = record(p.a);
    const atB = record(p.b);
    const c = await network.transport({ host: 'c' }).listen({ host: 'c', port: 0 });
    const aListener = await p.clientTransport.listen({ host: 'a', port: 0 });
    const udpA = await p.clientTransport.bindDatagram({ host: 'a', port: 0 });
    const udpB = await p.serverTransport.bindDatagram({ host: 'b', port: 0 });
    const udpC = await p.serverTransport.bindDatagram({ host: 'c', port: 0 });
    const got: string[] = [];
    udpB.on('message', (data) => got.push(`b:${data.toString()}`));
    udpC.on('message', (data) => got.push(`c:${data.toString()}`));

    network.partition('b', 'a');
    assert.equal(network.isPartitioned('a', 'b'), true);
    p.a.write([Buffer.from('lost')]);
    p.b.write([Buffer.from('lost too')]);
    const failed = (reason: string) => (e: unknown) => isBlockMirrorError(e, 'BM_ERR_CONNECT_FAILED') && e.details.reason === reason;
    await assert.rejects(p.clientTransport.connect(p.listener.address), failed('partitioned'));
    await assert.rejects(p.serverTransport.connect(aListener.address), failed('partitioned'));
    const toC = await p.clientTransport.connect(c.address);
    udpA.send(Buffer.from('1'), udpB.address);
    udpA.send(Buffer.from('2'), udpC.address);
    await turns();
    await fake.tickAsync(10_000);
    assert.deepEqual(got, ['c:2']);
    assert.equal(atA.chunks.length + atB.chunks.length, 0);
    assert.deepEqual([...atA.closes, ...atB.closes], []);

    network.heal('a', 'b');
    const fresh = await p.clientTransport.connect(p.listener.address);
    udpA.send(Buffer.from('3'), udpB.address);
    p.a.write([Buffer.from('still lost')]);
    await turns();
    assert.deepEqual(got, ['c:2', 'b:3']);
    assert.equal(atB.chunks.length, 0, 'a link blackholed by a partition stays dead after heal');
    assert.equal(network.datagramsDropped, 1);
    fresh.destroy();
    toC.destroy();
    await Promise.all([c.close(), aListener.close(), udpA.close(), udpB.close(), udpC.close()]);
    await p.close();
  });
});

describe('MemoryNetwork datagram faults (seeded)', () => {
  async function scenario(seed: number, faults: DatagramFaults, count = 100): Promise<number[]> {
    const { fake, network } = virtualNetwork({ random: seededRandom(seed) });
    network.setDatagramFaults(faults);
    const t = network.transport({ host: 'x' });
    const from = await t.bindDatagram({ host: 'x', port: 0 });
    const to = await t.bindDatagram({ host: 'y', port: 0 });
    const received: number[] = [];
    to.on('message', (data) => received.push(data.readUInt16BE(0)));
    for (let i = 0; i < count; i++) {
      const data = Buffer.alloc(2);
      data.writeUInt16BE(i);
      from.send(data, to.address);
    }
    await turns();
    await fake.tickAsync(1000);
    await turns();
    await Promise.all([from.close(), to.close()]);
    return received;
  }

  test('no faults: every datagram arrives once, in order', async () => {
    assert.deepEqual(await scenario(1, {}), Array.from({ length: 100 }, (_, i) => i));
  });

  test('dropRate drops a deterministic subset (same seed, same losses)', async () => {
    const first = await scenario(42, { dropRate: 0.3 });
    assert.deepEqual(await scenario(42, { dropRate: 0.3 }), first);
    assert.ok(first.length > 50 && first.length < 90, `kept ${first.length} of 100`);
    assert.deepEqual(first, [...first].sort((x, y) => x - y), 'no reordering without reorder');
    assert.notDeepEqual(await scenario(43, { dropRate: 0.3 }), first);
  });

  test('reorder permutes deterministically; nothing lost or duplicated', async () => {
    const first = await scenario(42, { reorder: true, reorderWindowMs: 20 });
    assert.deepEqual(await scenario(42, { reorder: true, reorderWindowMs: 20 }), first);
    assert.deepEqual([...first].sort((x, y) => x - y), Array.from({ length: 100 }, (_, i) => i));
    assert.notDeepEqual(first, [...first].sort((x, y) => x - y), 'order changed');
  });

  test('duplicateRate 1 delivers every datagram twice', async () => {
    const received = await scenario(5, { duplicateRate: 1 }, 20);
    assert.deepEqual(received, Array.from({ length: 20 }, (_, i) => [i, i]).flat());
  });

  test('delayMs delays delivery in virtual time', async () => {
    const { fake, network } = virtualNetwork();
    network.setDatagramFaults({ delayMs: 5 });
    assert.equal(network.datagramFaults.delayMs, 5);
    const t = network.transport();
    const u = await t.bindDatagram({ host: 'x', port: 0 });
    const v = await t.bindDatagram({ host: 'x', port: 0 });
    let count = 0;
    v.on('message', () => count++);
    u.send(Buffer.from('hi'), v.address);
    await turns();
    await fake.tickAsync(4);
    assert.equal(count, 0);
    await fake.tickAsync(1);
    assert.equal(count, 1);
    await Promise.all([u.close(), v.close()]);
  });
});
