/**
 * NbdServer resource limits against hostile clients on real sockets
 * (127.0.0.1, port 0): clients that never read their READ replies, too many
 * connections. Bytes held by the server stay within the budgets; other
 * clients keep working.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { BlockMirrorError } from '../../src/errors.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdServerOptions } from '../../src/nbd/server.js';
import { RawClient } from './raw-client.js';
import { ByteBudget } from '../../src/limits/byte-budget.js';

const MiB = 1024 * 1024;

async function start(t: TestContext, options: NbdServerOptions): Promise<{ server: NbdServer; port: number; errors: BlockMirrorError[] }> {
  const server = new NbdServer(options);
  const errors: BlockMirrorError[] = [];
  server.on('error', (e) => errors.push(e));
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  return { server, port, errors };
}

/** Lets pending I/O callbacks and microtasks run (event-loop turns, no timers). */
async function turns(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Counts backend reads. */
class CountingDevice extends MemoryBlockDevice {
  reads = 0;
  override read(offset: number, length: number): Promise<Buffer> {
    this.reads++;
    return super.read(offset, length);
  }
}

describe('NbdServer bytes in flight', () => {
  test('10 clients that never read their 1 MiB READ replies: the server holds at most the global budget plus one request per client, a reading client keeps working', async (t) => {
    const device = new CountingDevice(64 * MiB, { blockSize: 512 });
    const limit = 8 * MiB;
    const { server, port } = await start(t, {
      exports: [{ name: 'disk', readOnly: false, backend: device }],
      maxPayload: MiB,
      maxInFlightBytes: limit,
      maxInFlightBytesPerConnection: 4 * MiB,
    });
    const rssBefore = process.memoryUsage().rss;
    const hostile: RawClient[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await RawClient.connect(port);
      t.after(() => c.destroy());
      await c.go('disk');
      // from now on the client reads nothing: replies pile up in the kernel, then in the server
      c.socket.pause();
      hostile.push(c);
    }
    const requests = Buffer.concat(Array.from({ length: 64 }, (_, i) => RawClient.request(P.NBD_CMD_READ, i, (i % 64) * MiB, MiB)));
    for (const c of hostile) await c.write(requests);
    // the server reads until the budgets stop it: wait until some connection waits for room
    while (server.stats().budgetWaits === 0) await turns(1);
    const before = device.reads;
    await turns(50);
    const stats = server.stats();
    const bound = limit + 11 * MiB;
    assert.ok(stats.peakInFlightBytes <= bound, `peak ${stats.peakInFlightBytes} > ${bound}`);
    // RSS: the process (server and these clients) grew by far less than the 640 MiB asked for
    assert.ok(process.memoryUsage().rss - rssBefore < 200 * MiB, `rss grew by ${(process.memoryUsage().rss - rssBefore) / MiB} MiB`);
    // 640 READs were sent; far fewer were served (kernel buffers hold a few MiB per socket)
    assert.ok(device.reads < 640, `${device.reads} reads`);
    // a client that reads its replies still works while the others hold the shared budget
    const good = await RawClient.connect(port);
    t.after(() => good.destroy());
    await good.go('disk');
    for (let i = 0; i < 4; i++) {
      const r = await good.readAt(1000 + i, i * MiB, MiB);
      assert.equal(r.error, 0);
      assert.equal(r.data.length, MiB);
    }
    assert.ok(device.reads >= before + 4);
    assert.ok(server.stats().peakInFlightBytes <= bound);
    // once the hostile clients go away, everything they held is given back
    for (const c of hostile) c.destroy();
    await Promise.all(hostile.map((c) => c.closed));
    while (server.stats().connections > 1) await turns(1);
    assert.equal(server.stats().inFlightBytes, 0);
  });

  test('a client that never reads holds at most maxInFlightBytesPerConnection; its requests wait, none is dropped', async (t) => {
    const device = new CountingDevice(16 * MiB, { blockSize: 512 });
    const { server, port } = await start(t, {
      exports: [{ name: 'disk', readOnly: false, backend: device }],
      maxPayload: MiB,
      maxInFlightBytesPerConnection: 2 * MiB,
    });
    const c = await RawClient.connect(port);
    t.after(() => c.destroy());
    await c.go('disk');
    c.socket.pause();
    const n = 48;
    await c.write(Buffer.concat(Array.from({ length: n }, (_, i) => RawClient.request(P.NBD_CMD_READ, i, (i % 16) * MiB, MiB))));
    while (server.stats().inFlightBytes < 2 * MiB) await turns(1);
    await turns(50);
    assert.ok(server.stats().peakInFlightBytes <= 2 * MiB);
    assert.ok(device.reads < n);
    // reading again: every request is answered, in full
    c.socket.resume();
    const handles = new Set<number>();
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply(MiB);
      assert.equal(r.error, 0);
      handles.add(r.handle);
    }
    assert.equal(handles.size, n);
    assert.equal(device.reads, n);
  });
});

describe('NbdServer connection limit', () => {
  test('beyond maxConnections a new connection is closed at once with BM_ERR_TOO_MANY_CONNECTIONS; open ones keep working', async (t) => {
    const device = new MemoryBlockDevice(MiB, { blockSize: 512 });
    const { server, port, errors } = await start(t, { exports: [{ name: 'disk', readOnly: false, backend: device }], maxConnections: 2 });
    const a = await RawClient.connect(port);
    t.after(() => a.destroy());
    await a.go('disk');
    const idle = await RawClient.connect(port);
    t.after(() => idle.destroy());
    await idle.greeting();
    const refused = await RawClient.connect(port);
    t.after(() => refused.destroy());
    const rest = await refused.waitClosed();
    assert.equal(rest.length, 0);
    assert.equal(errors.at(-1)?.code, 'BM_ERR_TOO_MANY_CONNECTIONS');
    assert.equal(server.stats().refusedConnections, 1);
    assert.equal(await a.writeAt(1, 0, Buffer.alloc(512, 7)), 0);
    // a slot frees when a client leaves
    idle.destroy();
    await idle.closed;
    while (server.stats().connections > 1) await turns(1);
    const b = await RawClient.connect(port);
    t.after(() => b.destroy());
    await b.go('disk');
    assert.equal((await b.readAt(2, 0, 512)).data[0], 7);
  });
});

describe('ByteBudget', () => {
  test('shared limit, one request always for a holder that holds nothing, wake on release', () => {
    const budget = new ByteBudget(10);
    let woken = 0;
    const w = { wake: () => woken++ };
    assert.equal(budget.tryTake(8, w, 0), true);
    assert.equal(budget.tryTake(4, w, 8), false);
    assert.equal(budget.waiting, 1);
    // a holder that holds nothing always gets one request
    assert.equal(budget.tryTake(4, { wake() {} }, 0), true);
    assert.equal(budget.used, 12);
    budget.release(4);
    assert.equal(woken, 1);
    assert.equal(budget.waiting, 0);
    assert.equal(budget.peak, 12);
    // one request larger than everything still passes when nothing is held
    budget.release(8);
    assert.equal(budget.tryTake(100, w, 0), true);
  });
});
