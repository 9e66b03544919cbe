import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, mock, test } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { BlockMirrorError, isBlockMirrorError } from '../../src/errors.js';
import { TcpTransport } from '../../src/transport/tcp.js';
import type { TcpConnection, TcpServer } from '../../src/transport/tcp.js';
import { transportSuite } from '../../src/testing/transport-suite.js';

const HOST = '127.0.0.1';

transportSuite({
  name: 'TcpTransport',
  create: async () => ({ transport: new TcpTransport(), host: HOST }),
});

transportSuite({
  name: 'TcpTransport (highWaterMark 16 KiB, keepAlive)',
  create: async () => ({ transport: new TcpTransport({ highWaterMark: 16 * 1024, keepAlive: 1000 }), host: HOST }),
});

/** Listens, connects, and hands the test a client/peer pair; closes everything afterwards. */
async function withPair(
  transport: TcpTransport,
  body: (pair: { server: TcpServer; client: TcpConnection; peer: TcpConnection }) => Promise<void>,
): Promise<void> {
  const server = await transport.listen({ host: HOST, port: 0 });
  const accepted = new Promise<TcpConnection>((resolve) => server.once('connection', (c) => resolve(c as TcpConnection)));
  const client = await transport.connect({ host: HOST, port: server.address.port });
  const peer = await accepted;
  try {
    await body({ server, client, peer });
  } finally {
    const closed = new Promise<void>((resolve) => (client.closed && client.socket.closed ? resolve() : client.once('close', () => resolve())));
    client.destroy();
    await closed;
    await server.close();
  }
}

function receive(connection: TcpConnection, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  return new Promise((resolve, reject) => {
    connection.on('data', (chunk) => {
      chunks.push(chunk);
      total += chunk.length;
      if (total >= bytes) resolve(Buffer.concat(chunks));
    });
    connection.once('close', () => reject(new Error(`closed after ${total} bytes`)));
  });
}

describe('TcpTransport specifics', () => {
  test('noDelay is set on both ends by default and can be turned off', async () => {
    const spy = mock.method(net.Socket.prototype, 'setNoDelay');
    try {
      await withPair(new TcpTransport(), async () => {
        const calls = spy.mock.calls.map((call) => call.arguments[0]);
        assert.deepEqual(calls, [true, true], 'client and accepted socket');
      });
      spy.mock.resetCalls();
      await withPair(new TcpTransport({ noDelay: false }), async () => {
        assert.deepEqual(
          spy.mock.calls.map((call) => call.arguments[0]),
          [false, false],
        );
      });
    } finally {
      spy.mock.restore();
    }
  });

  test('keepAlive option enables TCP keep-alive with the given delay', async () => {
    const spy = mock.method(net.Socket.prototype, 'setKeepAlive');
    try {
      await withPair(new TcpTransport({ keepAlive: 5000 }), async () => {
        const calls = spy.mock.calls.map((call) => call.arguments);
        assert.deepEqual(calls, [
          [true, 5000],
          [true, 5000],
        ]);
      });
      spy.mock.resetCalls();
      await withPair(new TcpTransport(), async () => {
        assert.equal(spy.mock.calls.length, 0, 'off by default');
      });
    } finally {
      spy.mock.restore();
    }
  });

  test('write([header, payload]) hands the very same buffers to socket.write (no copy)', async () => {
    await withPair(new TcpTransport(), async ({ client, peer }) => {
      const spy = mock.method(client.socket, 'write');
      const header = Buffer.from('header');
      const payload = Buffer.alloc(256 * 1024, 7);
      const view = new Uint8Array(payload.buffer, payload.byteOffset + 10, 100);
      const arrived = receive(peer, header.length + payload.length + view.length);
      assert.equal(client.write([header, payload, view]), true);
      assert.equal(spy.mock.callCount(), 3);
      assert.equal(spy.mock.calls[0]?.arguments[0], header);
      assert.equal(spy.mock.calls[1]?.arguments[0], payload);
      assert.equal(spy.mock.calls[2]?.arguments[0], view);
      assert.deepEqual(await arrived, Buffer.concat([header, payload, view]));
    });
  });

  test('writes of one tick are corked once and uncorked on the next tick', async () => {
    await withPair(new TcpTransport(), async ({ client, peer }) => {
      const cork = mock.method(client.socket, 'cork');
      const uncork = mock.method(client.socket, 'uncork');
      const arrived = receive(peer, 3 * 4);
      client.write([Buffer.from('aaaa')]);
      client.write([Buffer.from('bbbb')]);
      client.write([Buffer.from('cccc')]);
      assert.equal(cork.mock.callCount(), 1, 'one cork for the tick');
      assert.equal(uncork.mock.callCount(), 0, 'not uncorked synchronously');
      assert.equal(client.socket.writableCorked, 1);
      assert.equal(client.bufferedAmount, 12, 'held while corked');
      await new Promise<void>((resolve) => process.nextTick(resolve));
      assert.equal(uncork.mock.callCount(), 1);
      assert.equal(client.socket.writableCorked, 0);
      assert.equal((await arrived).toString(), 'aaaabbbbcccc');
      client.write([Buffer.from('d')]);
      assert.equal(cork.mock.callCount(), 2, 'a new tick corks again');
    });
  });

  test('write() returns false above a small highWaterMark and drain follows', async () => {
    const transport = new TcpTransport({ highWaterMark: 64 * 1024 });
    await withPair(transport, async ({ client, peer }) => {
      assert.equal(client.socket.writableHighWaterMark, 64 * 1024);
      assert.equal(peer.socket.writableHighWaterMark, 64 * 1024);
      const arrived = receive(peer, 128 * 1024 + 1);
      assert.equal(client.write([Buffer.alloc(64 * 1024)]), true, 'exactly at the mark is fine');
      const drained = new Promise<void>((resolve) => client.once('drain', resolve));
      assert.equal(client.write([Buffer.alloc(64 * 1024 + 1)]), false);
      assert.ok(client.bufferedAmount > 64 * 1024);
      await drained;
      assert.equal((await arrived).length, 128 * 1024 + 1);
    });
  });

  test('a peer reset (ECONNRESET) closes with BM_ERR_CONNECTION_CLOSED', async () => {
    await withPair(new TcpTransport(), async ({ client, peer }) => {
      const closed = new Promise<Error | undefined>((resolve) => client.once('close', resolve));
      peer.socket.resetAndDestroy();
      const error = await closed;
      assert.ok(isBlockMirrorError(error, 'BM_ERR_CONNECTION_CLOSED'), String(error));
      assert.equal((error.cause as { code?: string }).code, 'ECONNRESET');
    });
  });

  test('connect times out (virtual clock) with BM_ERR_CONNECT_FAILED, reason timeout', async () => {
    const fake = FakeTimers.createClock();
    const transport = new TcpTransport({ clock: clockFrom(fake), connectTimeout: 50 });
    const server = await transport.listen({ host: HOST, port: 0 });
    try {
      const attempt = transport.connect({ host: HOST, port: server.address.port });
      fake.tick(49);
      fake.tick(1); // fires before the event loop could complete the connect
      await assert.rejects(attempt, (error: unknown) => {
        assert.ok(isBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED'));
        assert.equal(error.details.reason, 'timeout');
        return true;
      });
      const perCall = transport.connect({ host: HOST, port: server.address.port }, { timeout: 5 });
      fake.tick(5);
      await assert.rejects(perCall, (error: unknown) => isBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED') && error.details.reason === 'timeout');
    } finally {
      await server.close();
    }
  });

  test('aborting a connect in flight rejects with BM_ERR_CONNECT_FAILED, reason aborted', async () => {
    const transport = new TcpTransport();
    const server = await transport.listen({ host: HOST, port: 0 });
    try {
      const controller = new AbortController();
      const attempt = transport.connect({ host: HOST, port: server.address.port }, { signal: controller.signal });
      controller.abort();
      await assert.rejects(attempt, (error: unknown) => isBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED') && error.details.reason === 'aborted');
    } finally {
      await server.close();
    }
  });

  test('a refused connect reports the system reason', async () => {
    const transport = new TcpTransport();
    const server = await transport.listen({ host: HOST, port: 0 });
    const port = server.address.port;
    await server.close();
    await assert.rejects(transport.connect({ host: HOST, port }), (error: unknown) => {
      assert.ok(isBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED'));
      assert.equal(error.details.reason, 'ECONNREFUSED');
      assert.equal(error.details.port, port);
      return true;
    });
  });

  test('listen on a port held by a plain net.Server rejects with BM_ERR_ADDRESS_IN_USE', async () => {
    const plain = net.createServer();
    await new Promise<void>((resolve) => plain.listen(0, HOST, resolve));
    try {
      const { port } = plain.address() as net.AddressInfo;
      await assert.rejects(new TcpTransport().listen({ host: HOST, port }), (error: unknown) => {
        assert.ok(error instanceof BlockMirrorError);
        assert.equal(error.code, 'BM_ERR_ADDRESS_IN_USE');
        return true;
      });
    } finally {
      await new Promise<void>((resolve) => plain.close(() => resolve()));
    }
  });

  test('invalid options and addresses are refused with BM_ERR_INVALID_ARGUMENT', async () => {
    assert.throws(() => new TcpTransport({ highWaterMark: -1 }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    const transport = new TcpTransport();
    assert.throws(() => transport.connect({ host: HOST, port: 70000 }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    assert.throws(() => transport.listen({ host: '', port: 0 }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
  });
});
