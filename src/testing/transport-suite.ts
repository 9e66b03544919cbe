/**
 * The compliance suite of the {@link Transport} contract. Run it against
 * every implementation (and against wrappers) from a `node:test` file:
 *
 * ```ts
 * import { transportSuite } from 'blockmirror/testing';
 * transportSuite({
 *   name: 'MyTransport',
 *   create: async () => ({ transport: new MyTransport(), host: '127.0.0.1' }),
 * });
 * ```
 *
 * Every test creates a fresh context, closes every server, connection and
 * datagram channel it opened, then calls `cleanup()`.
 *
 * @module
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { isBlockMirrorError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import type {
  DatagramChannel,
  Transport,
  TransportAddress,
  TransportConnection,
  TransportServer,
  TransportSupports,
} from '../transport/transport.js';

/** What {@link TransportSuiteOptions.create} returns for one test. */
export interface TransportSuiteContext {
  /** The transport under test. */
  transport: Transport;
  /** Host to listen on, bind and connect to (e.g. `'127.0.0.1'`). */
  host: string;
  /** Called after each test, once every handle of the test is closed. */
  cleanup?(): Promise<void>;
}

/** Options of {@link transportSuite}. */
export interface TransportSuiteOptions {
  /** Name shown in the test titles. */
  name: string;
  /** Creates a fresh transport for one test. */
  create(): Promise<TransportSuiteContext>;
  /** Overrides the transport's own `supports` manifest (gates the datagram tests). */
  supports?: Partial<TransportSupports>;
  /** Per-test timeout in milliseconds (default 60 000). */
  timeout?: number;
}

const MiB = 1024 * 1024;

/** Lets pending immediates, I/O callbacks and microtasks run (a few event-loop turns; not a timed sleep). */
async function turns(count = 3): Promise<void> {
  for (let i = 0; i < count; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Records what a connection emits. */
class Sink {
  readonly chunks: Buffer[] = [];
  bytes = 0;
  closes = 0;
  closeError: Error | undefined;
  bytesAtClose = -1;
  readonly #keep: boolean;
  readonly #hash = createHash('sha256');
  #waiters: { bytes: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  #closeWaiters: ((error: Error | undefined) => void)[] = [];

  constructor(connection: TransportConnection, keep = true) {
    this.#keep = keep;
    connection.on('data', (chunk) => {
      assert.ok(this.closes === 0, 'data event after close');
      if (this.#keep) this.chunks.push(Buffer.from(chunk));
      else this.#hash.update(chunk);
      this.bytes += chunk.length;
      this.#waiters = this.#waiters.filter((waiter) => {
        if (this.bytes < waiter.bytes) return true;
        waiter.resolve();
        return false;
      });
    });
    connection.on('close', (error) => {
      this.closes++;
      if (this.closes > 1) return;
      this.closeError = error;
      this.bytesAtClose = this.bytes;
      for (const waiter of this.#waiters) {
        waiter.reject(new Error(`connection closed after ${this.bytes} of ${waiter.bytes} bytes (${String(error)})`));
      }
      this.#waiters = [];
      for (const resolve of this.#closeWaiters) resolve(error);
      this.#closeWaiters = [];
    });
  }

  data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  digest(): string {
    return this.#hash.digest('hex');
  }

  waitBytes(bytes: number): Promise<void> {
    if (this.bytes >= bytes) return Promise.resolve();
    if (this.closes > 0) return Promise.reject(new Error(`connection closed after ${this.bytes} of ${bytes} bytes`));
    return new Promise((resolve, reject) => this.#waiters.push({ bytes, resolve, reject }));
  }

  waitClose(): Promise<Error | undefined> {
    if (this.closes > 0) return Promise.resolve(this.closeError);
    return new Promise((resolve) => this.#closeWaiters.push(resolve));
  }
}

/** Every handle opened by one test, closed at its end. */
class Handles {
  readonly #connections = new Map<TransportConnection, Promise<void>>();
  readonly #servers: TransportServer[] = [];
  readonly #channels: DatagramChannel[] = [];

  connection<T extends TransportConnection>(connection: T): T {
    if (!this.#connections.has(connection)) {
      this.#connections.set(connection, new Promise<void>((resolve) => connection.once('close', () => resolve())));
    }
    return connection;
  }

  server(server: TransportServer): TransportServer {
    server.on('connection', (connection) => this.connection(connection));
    this.#servers.push(server);
    return server;
  }

  channel(channel: DatagramChannel): DatagramChannel {
    this.#channels.push(channel);
    return channel;
  }

  async closeAll(): Promise<void> {
    for (const connection of this.#connections.keys()) connection.destroy();
    await Promise.all(this.#connections.values());
    await Promise.all(this.#servers.map((server) => server.close()));
    await Promise.all(this.#channels.map((channel) => channel.close()));
  }
}

interface Env extends TransportSuiteContext {
  handles: Handles;
  listen(port?: number): Promise<TransportServer>;
  connect(port: number): Promise<TransportConnection>;
  /** A listener, a client connection and the accepted peer. */
  pair(): Promise<{ server: TransportServer; client: TransportConnection; peer: TransportConnection }>;
}

function nextConnection(server: TransportServer): Promise<TransportConnection> {
  return new Promise((resolve) => server.once('connection', resolve));
}

function waitDrain(connection: TransportConnection): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      connection.off('close', onClose);
      resolve();
    };
    const onClose = (error?: Error): void => {
      connection.off('drain', onDrain);
      reject(new Error(`closed while waiting for drain (${String(error)})`));
    };
    connection.once('drain', onDrain);
    connection.once('close', onClose);
  });
}

async function assertRejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isBlockMirrorError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

function assertPeerCloseError(error: Error | undefined): void {
  assert.ok(
    error === undefined || isBlockMirrorError(error, 'BM_ERR_CONNECTION_CLOSED'),
    `peer close error must be absent or BM_ERR_CONNECTION_CLOSED, got ${String(error)}`,
  );
}

/**
 * Registers `node:test` tests of the whole {@link Transport} contract for one
 * implementation: listening, connecting, byte streams both ways, a 16 MiB
 * transfer under back-pressure, write batching, close semantics (`end`,
 * `destroy`, `destroy(error)`, `server.close()`), error codes, pause/resume,
 * write-after-close, and datagrams when supported.
 */
export function transportSuite(options: TransportSuiteOptions): void {
  const timeout = options.timeout ?? 60_000;

  async function run(body: (env: Env) => Promise<void>): Promise<void> {
    const context = await options.create();
    const handles = new Handles();
    const { transport, host } = context;
    const env: Env = {
      ...context,
      handles,
      listen: async (port = 0) => handles.server(await transport.listen({ host, port })),
      connect: async (port) => handles.connection(await transport.connect({ host, port })),
      pair: async () => {
        const server = await env.listen();
        const accepted = nextConnection(server);
        const client = await env.connect(server.address.port);
        const peer = await accepted;
        return { server, client, peer };
      },
    };
    try {
      await body(env);
    } finally {
      await handles.closeAll();
      await context.cleanup?.();
    }
  }

  function it(title: string, body: (env: Env) => Promise<void>): void {
    test(title, { timeout }, () => run(body));
  }

  describe(`Transport compliance: ${options.name}`, () => {
    it('listen on port 0 binds a real port', async ({ listen }) => {
      const first = await listen();
      const second = await listen();
      for (const server of [first, second]) {
        assert.equal(typeof server.address.host, 'string');
        assert.ok(Number.isInteger(server.address.port), 'port is an integer');
        assert.ok(server.address.port > 0 && server.address.port <= 65535, `port ${server.address.port} in 1..65535`);
      }
      assert.notEqual(first.address.port, second.address.port);
    });

    it('connect reaches the listener; both ends report matching addresses', async ({ pair }) => {
      const { server, client, peer } = await pair();
      assert.equal(client.remoteAddress.port, server.address.port);
      assert.equal(peer.localAddress.port, server.address.port);
      assert.ok(client.localAddress.port > 0);
      assert.equal(peer.remoteAddress.port, client.localAddress.port);
      assert.equal(client.closed, false);
      assert.equal(peer.closed, false);
      assert.equal(client.bufferedAmount, 0);
    });

    it('bytes flow both ways unchanged (echo)', async ({ pair }) => {
      const { client, peer } = await pair();
      peer.on('data', (chunk) => peer.write([chunk]));
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      const sent = [randomBytes(1), randomBytes(1000), randomBytes(70_000)];
      for (const chunk of sent) client.write([chunk]);
      const expected = Buffer.concat(sent);
      await atPeer.waitBytes(expected.length);
      await atClient.waitBytes(expected.length);
      assert.deepEqual(atPeer.data(), expected);
      assert.deepEqual(atClient.data(), expected);
    });

    it('the chunks of one write() arrive contiguous and in order', async ({ pair }) => {
      const { client, peer } = await pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      const header1 = Buffer.from('HDR1');
      const payload1 = randomBytes(4096);
      const header2 = Buffer.from('HDR2');
      const payload2 = randomBytes(100_000);
      const trailer = new Uint8Array([1, 2, 3]);
      client.write([header1, payload1]);
      client.write([header2, payload2, trailer]);
      peer.write([Buffer.from('reply:'), payload1]);
      const expected = Buffer.concat([header1, payload1, header2, payload2, trailer]);
      await atPeer.waitBytes(expected.length);
      assert.deepEqual(atPeer.data(), expected);
      await atClient.waitBytes(6 + payload1.length);
      assert.deepEqual(atClient.data(), Buffer.concat([Buffer.from('reply:'), payload1]));
    });

    it('a 16 MiB transfer arrives intact and in order; write() returns false and drain follows', async ({ pair }) => {
      const { client, peer } = await pair();
      const total = 16 * MiB;
      const chunkSize = 64 * 1024;
      const atPeer = new Sink(peer, false);
      const sentHash = createHash('sha256');
      const base = randomBytes(chunkSize);
      let falses = 0;
      let drains = 0;
      for (let index = 0; index * chunkSize < total; index++) {
        const chunk = Buffer.from(base);
        chunk.writeUInt32BE(index, 0); // every chunk differs, so reordering would show
        sentHash.update(chunk);
        if (!client.write([chunk])) {
          falses++;
          assert.ok(client.bufferedAmount > 0, 'bufferedAmount > 0 when write() returned false');
          await waitDrain(client);
          drains++;
        }
      }
      await atPeer.waitBytes(total);
      await turns();
      assert.equal(atPeer.bytes, total);
      assert.equal(atPeer.digest(), sentHash.digest('hex'), 'received bytes equal sent bytes, in order');
      assert.ok(falses > 0, 'write() returned false at least once');
      assert.equal(drains, falses, 'each false was followed by drain');
    });

    it('end(): queued data is delivered, then both ends close exactly once without error', async ({ pair }) => {
      const { client, peer } = await pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      const payload = randomBytes(MiB);
      client.write([payload]);
      client.end();
      assert.equal(client.closed, true, 'closed is true right after end()');
      assert.equal(await atPeer.waitClose(), undefined);
      assert.equal(await atClient.waitClose(), undefined);
      assert.equal(atPeer.bytesAtClose, payload.length, 'all data arrived before close');
      assert.deepEqual(atPeer.data(), payload);
      await turns();
      assert.equal(atPeer.closes, 1);
      assert.equal(atClient.closes, 1);
      assert.equal(peer.closed, true);
    });

    it('destroy(): both ends close exactly once; the local close carries no error', async ({ pair }) => {
      const { client, peer } = await pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      client.destroy();
      assert.equal(client.closed, true, 'closed is true right after destroy()');
      assert.equal(await atClient.waitClose(), undefined);
      assertPeerCloseError(await atPeer.waitClose());
      client.destroy();
      client.destroy(new Error('again'));
      client.end();
      await turns();
      assert.equal(atClient.closes, 1);
      assert.equal(atPeer.closes, 1);
      assert.equal(peer.closed, true);
    });

    it('destroy(error): the local close carries that error; the peer closes once', async ({ pair }) => {
      const { client, peer } = await pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      const error = new Error('boom');
      peer.destroy(error);
      assert.equal(await atPeer.waitClose(), error);
      const clientError = await atClient.waitClose();
      assertPeerCloseError(clientError);
      await turns();
      assert.equal(atClient.closes, 1);
      assert.equal(atPeer.closes, 1);
    });

    it('server.close() stops listening and destroys accepted connections', async (env) => {
      const { server, client, peer } = await env.pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      const port = server.address.port;
      await server.close();
      assert.equal(atPeer.closes, 1, 'accepted connection closed when close() resolves');
      assert.equal(peer.closed, true);
      assertPeerCloseError(await atClient.waitClose());
      await assertRejectsWith(env.transport.connect({ host: env.host, port }), 'BM_ERR_CONNECT_FAILED');
      await server.close(); // idempotent
      await turns();
      assert.equal(atPeer.closes, 1);
      assert.equal(atClient.closes, 1);
    });

    it('connect where nobody listens rejects with BM_ERR_CONNECT_FAILED', async ({ transport, host }) => {
      const server = await transport.listen({ host, port: 0 });
      const port = server.address.port;
      await server.close();
      await assertRejectsWith(transport.connect({ host, port }), 'BM_ERR_CONNECT_FAILED');
    });

    it('listen on a taken port rejects with BM_ERR_ADDRESS_IN_USE; the first listener keeps working', async (env) => {
      const server = await env.listen();
      await assertRejectsWith(env.transport.listen({ host: env.host, port: server.address.port }), 'BM_ERR_ADDRESS_IN_USE');
      const accepted = nextConnection(server);
      await env.connect(server.address.port);
      assert.equal((await accepted).closed, false);
    });

    it('an already aborted signal fails connect with BM_ERR_CONNECT_FAILED', async (env) => {
      const server = await env.listen();
      const controller = new AbortController();
      controller.abort();
      await assertRejectsWith(
        env.transport.connect({ host: env.host, port: server.address.port }, { signal: controller.signal }),
        'BM_ERR_CONNECT_FAILED',
      );
    });

    it('write(), end() and destroy() after close are silent no-ops', async ({ pair }) => {
      const { client, peer } = await pair();
      const atPeer = new Sink(peer);
      const atClient = new Sink(client);
      client.destroy();
      await atClient.waitClose();
      assert.doesNotThrow(() => client.write([Buffer.from('late')]));
      await atPeer.waitClose();
      assert.doesNotThrow(() => peer.write([Buffer.from('late'), Buffer.from('too')]));
      assert.doesNotThrow(() => peer.end());
      assert.doesNotThrow(() => peer.destroy(new Error('late')));
      assert.doesNotThrow(() => client.end());
      await turns();
      assert.equal(atClient.closes, 1);
      assert.equal(atPeer.closes, 1);
      assert.equal(atPeer.bytes, 0);
    });

    it('pause() holds incoming data; resume() releases it in order', async (env) => {
      const server = await env.listen();
      const accepted = nextConnection(server);
      const held = await env.connect(server.address.port);
      const heldPeer = await accepted;
      const acceptedProbe = nextConnection(server);
      const probe = await env.connect(server.address.port);
      const probePeer = await acceptedProbe;
      probePeer.on('data', (chunk) => probePeer.write([chunk]));
      const atProbe = new Sink(probe);

      heldPeer.pause();
      const atHeld = new Sink(heldPeer);
      const payload = [randomBytes(10_000), randomBytes(20_000), randomBytes(30_000)];
      for (const chunk of payload) held.write([chunk]);
      // Round trips on a second connection: the held data had every chance to arrive meanwhile.
      for (let i = 1; i <= 3; i++) {
        probe.write([Buffer.from([i])]);
        await atProbe.waitBytes(i);
        await turns();
      }
      assert.equal(atHeld.bytes, 0, 'no data event while paused');
      heldPeer.resume();
      const expected = Buffer.concat(payload);
      await atHeld.waitBytes(expected.length);
      assert.deepEqual(atHeld.data(), expected);
    });

    it('datagrams: send and receive both ways with the sender address (or bindDatagram absent)', async (env) => {
      const { transport, host, handles } = env;
      const supported = options.supports?.datagram ?? transport.supports.datagram;
      if (!supported) {
        assert.equal(transport.bindDatagram, undefined, 'supports.datagram false: bindDatagram must be absent');
        return;
      }
      assert.ok(transport.bindDatagram !== undefined, 'supports.datagram true: bindDatagram must exist');
      const a = handles.channel(await transport.bindDatagram({ host, port: 0 }));
      const b = handles.channel(await transport.bindDatagram({ host, port: 0 }));
      assert.ok(a.address.port > 0 && b.address.port > 0);
      assert.notEqual(a.address.port, b.address.port);
      const received = (channel: DatagramChannel): Promise<[Buffer, TransportAddress]> =>
        new Promise((resolve) => channel.once('message', (data, from) => resolve([data, from])));

      const atB = received(b);
      const ping = randomBytes(200);
      a.send(ping, { host, port: b.address.port });
      const [data, from] = await atB;
      assert.deepEqual(data, ping);
      assert.equal(from.port, a.address.port);

      const atA = received(a);
      const pong = new Uint8Array([9, 8, 7]);
      b.send(pong, from);
      const [back, backFrom] = await atA;
      assert.deepEqual(new Uint8Array(back), pong);
      assert.equal(backFrom.port, b.address.port);
    });

    it('datagrams: binding a taken port rejects with BM_ERR_ADDRESS_IN_USE; send after close is a no-op', async (env) => {
      const { transport, host, handles } = env;
      const supported = options.supports?.datagram ?? transport.supports.datagram;
      if (!supported || transport.bindDatagram === undefined) {
        assert.equal(transport.bindDatagram, undefined, 'supports.datagram false: bindDatagram must be absent');
        return;
      }
      const a = handles.channel(await transport.bindDatagram({ host, port: 0 }));
      await assertRejectsWith(transport.bindDatagram({ host, port: a.address.port }), 'BM_ERR_ADDRESS_IN_USE');
      await a.close();
      assert.doesNotThrow(() => a.send(Buffer.from('late'), { host, port: a.address.port }));
      await a.close(); // idempotent
    });
  });
}
