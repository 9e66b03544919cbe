import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { onceEvent } from '../helpers/events.js';
import FakeTimers from '@sinonjs/fake-timers';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { clockFrom } from '../../src/clock.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import { encodeFrame } from '../../src/codec/encoder.js';
import { FrameDecoder } from '../../src/codec/decoder.js';
import { MessageType, type Frame } from '../../src/codec/frame.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { startPair } from '../helpers/pair.js';

const MiB = 1 << 20;
const device = (size = MiB) => new RecordingDevice(new MemoryBlockDevice(size, { blockSize: 512 }));

test('SPEC 1: no mirror connections exist before a mirror is engaged', async () => {
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({
    transport: network.transport({ host: '10.0.0.2' }),
    listen: { host: '10.0.0.2', port: 0 },
    volumes: [{ name: 'v', device: device() }],
  });
  try {
    assert.equal(network.connectionsOpened, 0);
    assert.deepEqual(target.status().peers, []);
    // a primary whose volumes are all local engages no mirror
    const primary = await createPrimary({
      transport: network.transport({ host: '10.0.0.1' }),
      peer: target.address,
      volumes: [{ name: 'v', device: device(), mode: 'local' }],
    });
    await primary.volume('v').write(0, Buffer.alloc(512, 1));
    assert.equal(network.connectionsOpened, 0);
    assert.equal(network.bytesSent, 0);
    await primary.close();
  } finally {
    await target.close();
  }
});

test('SPEC 2: engaging a mirror with n workers opens n connections; worker m uses connection m', async () => {
  const seen: number[] = [];
  // no durability flush in the middle of the count (durableInterval, durableDelay)
  const pair = await startPair([{ name: 'v', mode: 'async' }], { primary: { connections: 3, durableInterval: 3_600_000, durableDelay: 3_600_000 } });
  try {
    const status = pair.primary.status();
    assert.equal(status.peers[0]!.link, 'up');
    assert.deepEqual(status.peers[0]!.connections.map((c) => [c.index, c.status]), [[0, 'open'], [1, 'open'], [2, 'open']]);
    assert.equal(pair.target.status().volumes.v!.connections, 3);
    pair.target.on('connection', (c) => seen.push(c.slot));
    const sent = (): number[] => pair.primary.status().peers[0]!.connections.map((c) => c.sent);
    // one write per tick: the workers take turns
    for (let i = 0; i < 9; i++) {
      await pair.primary.volume('v').write(i * 4096, Buffer.alloc(4096, i));
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // acknowledged (drain() would add a durability flush to the count)
    while (!pair.primary.volume('v').idle) await onceEvent(pair.primary.volume('v'), 'idle');
    assert.deepEqual(sent(), [3, 3, 3], 'round-robin over the workers');
    // the writes of one tick travel together on one worker's connection
    const before = sent();
    await Promise.all(Array.from({ length: 6 }, (_, i) => pair.primary.volume('v').write((16 + i) * 4096, Buffer.alloc(4096, i))));
    while (!pair.primary.volume('v').idle) await onceEvent(pair.primary.volume('v'), 'idle');
    const delta = sent().map((n, i) => n - before[i]!);
    assert.deepEqual([...delta].sort(), [0, 0, 6], `one connection for the batch, got ${delta.join(',')}`);
    assert.deepEqual(seen, [], 'no extra connections');
  } finally {
    await pair.close();
  }
});

test('a primary with a wrong or missing secret is refused with a coded error and writes nothing', async () => {
  const tdev = device();
  const target = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, secret: 'right', volumes: [{ name: 'v', device: tdev }] });
  const errors: string[] = [];
  target.on('connection-error', (e) => errors.push(e.code));
  try {
    for (const secret of ['wrong', undefined]) {
      await assert.rejects(
        createPrimary({ peer: target.address, volumes: [{ name: 'v', device: device() }], connections: 2, ...(secret === undefined ? {} : { secret }) }),
        { code: 'BM_ERR_AUTH_FAILED' },
      );
    }
    assert.equal(tdev.count('write'), 0);
    assert.ok(errors.includes('BM_ERR_AUTH_FAILED'));
    assert.equal(target.status().volumes.v!.connections, 0);
    // the right secret works
    const ok = await createPrimary({ peer: target.address, secret: 'right', volumes: [{ name: 'v', device: device() }] });
    const r = await ok.volume('v').write(0, Buffer.alloc(512, 3));
    assert.equal(r.mirror, 'acknowledged');
    await ok.close();
  } finally {
    await target.close();
  }
});

/** Runs a raw client through HELLO/AUTH with a bad proof and returns every byte the target sent. */
async function rawClient(port: number, frames: (challenge: Frame) => Uint8Array[][]): Promise<Buffer> {
  const sock = net.connect(port, '127.0.0.1');
  await once(sock, 'connect');
  const received: Buffer[] = [];
  const closed = once(sock, 'close');
  let answered = false;
  const decoder = new FrameDecoder({
    onFrame: (f) => {
      if (f.type === MessageType.CHALLENGE && !answered) {
        answered = true;
        for (const chunks of frames(f)) for (const c of chunks) sock.write(c);
      }
    },
  });
  sock.on('data', (d) => {
    received.push(d);
    try {
      decoder.push(d);
    } catch {
      // not our concern here
    }
  });
  sock.on('error', () => {});
  sock.write(
    encodeFrame(MessageType.HELLO, {
      protocol: [1, 1],
      node: 'intruder',
      session: 's',
      slot: 0,
      slots: 1,
      features: [],
      nonce: new Uint8Array(32),
    })[0]!,
  );
  await closed;
  return Buffer.concat(received);
}

test('an intruder without the secret learns no volume name and writes nothing', async () => {
  const tdev = device();
  const target = await createMirrorTarget({
    listen: { host: '127.0.0.1', port: 0 },
    secret: 'right',
    volumes: [{ name: 'secret-volume-name', device: tdev }],
  });
  try {
    const bytes = await rawClient(target.address.port, () => [
      encodeFrame(MessageType.AUTH, { proof: new Uint8Array(32), volumes: [{ name: 'secret-volume-name', size: MiB, blockSize: 512, generation: 'x', stream: 's', base: 0 }] }),
      encodeFrame(MessageType.WRITE, { id: 1, vol: 0, off: 0, seq: 1, bar: 0 }, Buffer.alloc(512, 0xff)),
    ]);
    assert.equal(bytes.includes('secret-volume-name'), false);
    assert.ok(bytes.includes('BM_ERR_AUTH_FAILED'), 'told why');
    assert.equal(tdev.count('write'), 0);
  } finally {
    await target.close();
  }
});

test('a primary with a secret refuses a target that cannot prove it, before naming any volume', async () => {
  const received: Buffer[] = [];
  const server = net.createServer((sock) => {
    sock.on('data', (d) => {
      received.push(d);
      // answer HELLO with a CHALLENGE that carries no proof
      sock.write(encodeFrame(MessageType.CHALLENGE, { protocol: 1, node: 'impostor', features: [], nonce: new Uint8Array(32) })[0]!);
    });
    sock.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  try {
    await assert.rejects(
      createPrimary({ peer: { host: '127.0.0.1', port }, secret: 's', connections: 1, volumes: [{ name: 'private-name', device: device() }] }),
      { code: 'BM_ERR_AUTH_FAILED' },
    );
    assert.equal(Buffer.concat(received).includes('private-name'), false);
  } finally {
    server.close();
    await once(server, 'close');
  }
});

test('a volume of another size or block size, or an unknown volume, is refused with nothing written', async () => {
  const tdev = device(MiB);
  const target = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: tdev }] });
  try {
    await assert.rejects(createPrimary({ peer: target.address, volumes: [{ name: 'v', device: device(2 * MiB) }] }), (e: Error & { code?: string; details?: Record<string, unknown> }) => {
      assert.equal(e.code, 'BM_ERR_VOLUME_MISMATCH');
      return true;
    });
    await assert.rejects(
      createPrimary({ peer: target.address, volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 4096 }) }] }),
      { code: 'BM_ERR_VOLUME_MISMATCH' },
    );
    await assert.rejects(createPrimary({ peer: target.address, volumes: [{ name: 'nope', device: device() }] }), { code: 'BM_ERR_UNKNOWN_VOLUME' });
    assert.equal(tdev.count('write'), 0);
  } finally {
    await target.close();
  }
});

test('SPEC 20: a second concurrent primary for the same target volume is refused', async () => {
  const pair = await startPair([{ name: 'v', mode: 'sync' }]);
  try {
    await assert.rejects(createPrimary({ peer: pair.target.address, volumes: [{ name: 'v', device: device() }] }), { code: 'BM_ERR_VOLUME_BUSY' });
    assert.equal((await pair.primary.volume('v').write(0, Buffer.alloc(512, 1))).mirror, 'acknowledged');
  } finally {
    await pair.close();
  }
});

test('garbage from a socket closes only that connection with a coded error; the mirror keeps working', async () => {
  const pair = await startPair([{ name: 'v', mode: 'sync' }]);
  try {
    const errors = new Promise<string>((resolve) => pair.target.once('connection-error', (e) => resolve(e.code)));
    const sock = net.connect(pair.target.address.port, '127.0.0.1');
    sock.on('error', () => {});
    sock.resume(); // read (and so see the FIN) without a data listener
    const closed = once(sock, 'close');
    sock.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal(await errors, 'BM_ERR_BAD_MAGIC');
    await closed;
    assert.equal((await pair.primary.volume('v').write(0, Buffer.alloc(512, 1))).mirror, 'acknowledged');
  } finally {
    await pair.close();
  }
});

test('a client that never completes the handshake is closed after the handshake timeout', async () => {
  const fake = FakeTimers.createClock(0);
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({
    transport: network.transport({ host: '10.0.0.2' }),
    listen: { host: '10.0.0.2', port: 0 },
    clock: clockFrom(fake),
    handshakeTimeout: 5000,
    volumes: [{ name: 'v', device: device() }],
  });
  try {
    const errors: string[] = [];
    target.on('connection-error', (e) => errors.push(e.code));
    const conn = await network.transport({ host: '10.0.0.1' }).connect(target.address);
    const closed = onceEvent(conn, 'close');
    fake.tick(4999);
    assert.equal(conn.closed, false);
    fake.tick(1);
    await closed;
    assert.deepEqual(errors, ['BM_ERR_HANDSHAKE_TIMEOUT']);
  } finally {
    await target.close();
  }
});

test('bad options are refused with BM_ERR_INVALID_ARGUMENT', async () => {
  const d = device();
  const cases: unknown[] = [
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [] },
    { peer: { host: '127.0.0.1', port: 70000 }, volumes: [{ name: 'v', device: d }] },
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [{ name: 'a/b', device: d }] },
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [{ name: 'v', device: d, mode: 'fast' }] },
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [{ name: 'v', device: d }], connections: 0 },
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [{ name: 'v', device: d }], secret: '' },
    { peer: { host: '127.0.0.1', port: 1 }, volumes: [{ name: 'v', device: d }, { name: 'v', device: d }] },
  ];
  for (const c of cases) {
    await assert.rejects(createPrimary(c as never), { code: 'BM_ERR_INVALID_ARGUMENT' }, JSON.stringify(c, (k, v) => (k === 'device' ? '…' : v)));
  }
  await assert.rejects(createMirrorTarget({ listen: { host: '127.0.0.1', port: -1 }, volumes: [] }), { code: 'BM_ERR_INVALID_ARGUMENT' });
});
