/**
 * NbdBlockDevice beyond the compliance suite: request splitting and block
 * size constraints, multi-conn, the mapping of FUA/flush/zero to what the
 * server advertises, error replies, handshake failures, the in-flight bound,
 * allocation maps, and reconnection with backoff (fake clock) through a TCP
 * proxy the test can cut. Real sockets on 127.0.0.1 port 0 or Unix sockets.
 */
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { createClock } from '@sinonjs/fake-timers';
import { clockFrom, type Clock } from '../../src/clock.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError, type ErrorCode } from '../../src/errors.js';
import type { NbdBackend, NbdExport } from '../../src/nbd/export.js';
import { NbdBlockDevice, type NbdBlockDeviceOptions } from '../../src/nbd/nbd-block-device.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { onceEvent } from '../helpers/events.js';
import { imagesEqual, startPair } from '../helpers/pair.js';
import { startNbdkit, type RunningNbdServer } from '../helpers/nbd-servers.js';
import { requireTool } from '../helpers/tools.js';
import { GatedBackend } from './raw-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((i * 31 + seed * 7 + (i >> 9)) & 0xff) | 1;
  return b;
}

async function serve(t: TestContext, exports: NbdExport[] | (() => NbdExport[]), options: { maxPayload?: number } = {}): Promise<{ server: NbdServer; port: number; uri: (name: string) => string }> {
  const server = new NbdServer({ exports, ...options });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  return { server, port, uri: (name) => `nbd://127.0.0.1:${port}/${name}` };
}

/** Cleanups of a test, run last-registered first (devices close before the servers they use stop). */
const stacks = new WeakMap<TestContext, Array<() => Promise<unknown>>>();
function defer(t: TestContext, fn: () => Promise<unknown>): void {
  let stack = stacks.get(t);
  if (stack === undefined) {
    const list: Array<() => Promise<unknown>> = [];
    stack = list;
    stacks.set(t, list);
    t.after(async () => {
      for (const f of list.reverse()) await f();
    });
  }
  stack.push(fn);
}

async function open(t: TestContext, uri: string, options: NbdBlockDeviceOptions = {}): Promise<NbdBlockDevice> {
  const device = await NbdBlockDevice.open(uri, options);
  defer(t, () => device.close());
  return device;
}

/** Stops an nbdkit server when the test ends (after the devices opened later are closed). */
function stopAfter(t: TestContext, server: RunningNbdServer): RunningNbdServer {
  defer(t, () => server.stop());
  return server;
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode, what: string): Promise<BlockMirrorError> {
  let caught: unknown;
  await assert.rejects(promise, (error: unknown) => {
    caught = error;
    return true;
  }, what);
  assert.ok(caught instanceof BlockMirrorError, `${what}: ${String(caught)}`);
  assert.equal(caught.code, code, `${what}: ${caught.message}`);
  return caught;
}

/** A TCP proxy in front of a server that the test can cut (every socket destroyed, listener closed) and restore on the same port. */
class CuttableProxy {
  readonly #target: number;
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();
  port = 0;
  accepted = 0;

  constructor(targetPort: number) {
    this.#target = targetPort;
  }

  async listen(port = 0): Promise<number> {
    const server = net.createServer((client) => {
      this.accepted++;
      const upstream = net.connect({ host: '127.0.0.1', port: this.#target });
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    this.#server = server;
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port }, resolve));
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  async cut(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    const closed = server === undefined ? Promise.resolve() : new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}

/** A clock whose timers run only when the test ticks it, recording the delays asked for. */
function fakeClock(): { clock: Clock; tick(ms: number): void; delays: number[] } {
  const fake = createClock();
  const delays: number[] = [];
  const base = clockFrom(fake);
  const clock: Clock = {
    ...base,
    setTimeout: (cb, ms) => {
      delays.push(ms);
      return base.setTimeout(cb, ms);
    },
  };
  return { clock, tick: (ms) => fake.tick(ms), delays };
}

describe('NbdBlockDevice geometry and request sizes', () => {
  test('requests longer than the server maximum payload are split; every part fits, the data round-trips', async (t) => {
    const backend = new GatedBackend(new MemoryBlockDevice(4 * MiB));
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }], { maxPayload: 64 * KiB });
    const device = await open(t, uri('disk'));
    assert.equal(device.maxRequestSize, 64 * KiB);
    const data = pattern(MiB + 4 * KiB, 1);
    await device.write(512 * KiB, data);
    const writes = backend.calls.filter((c) => c.op === 'write');
    assert.equal(writes.length, 17);
    assert.ok(writes.every((c) => c.length <= 64 * KiB));
    assert.deepEqual(await device.read(512 * KiB, data.length), data);
    assert.ok(backend.calls.filter((c) => c.op === 'read').every((c) => c.length <= 64 * KiB));
    // maxRequestSize lowers it further
    const small = await open(t, uri('disk'), { maxRequestSize: 16 * KiB });
    assert.equal(small.maxRequestSize, 16 * KiB);
    assert.deepEqual(await small.read(512 * KiB, data.length), data);
  });

  test('nbdkit with a 64 KiB maximum and minimum 4096 (blocksize-policy, errors on violations): the device uses 4096-byte blocks and splits', async (t) => {
    if (!requireTool('nbdkit', t)) return;
    const server = stopAfter(
      t,
      await startNbdkit('memory', ['4M', 'blocksize-minimum=4096', 'blocksize-maximum=65536', 'blocksize-error-policy=error'], ['--filter=blocksize-policy']),
    );
    const device = await open(t, server.uri);
    assert.equal(device.blockSize, 4096);
    assert.equal(device.maxRequestSize, 64 * KiB);
    const data = pattern(2 * MiB, 2);
    await device.write(4096, data, { fua: true });
    assert.deepEqual(await device.read(4096, data.length), data);
    await device.trim(4096, MiB);
    assert.ok((await device.read(4096, MiB)).every((b) => b === 0));
    await rejectsWith(NbdBlockDevice.open(server.uri, { blockSize: 512 }), 'BM_ERR_INVALID_ARGUMENT', 'a block size below the server minimum');
  });

  test('the export size must be a multiple of the block size and match options.size', async (t) => {
    const { uri } = await serve(t, [{ name: 'odd', readOnly: false, backend: new MemoryBlockDevice(3 * 512) }]);
    await rejectsWith(NbdBlockDevice.open(uri('odd'), { blockSize: 1024 }), 'BM_ERR_INVALID_ARGUMENT', 'size not a multiple');
    await rejectsWith(NbdBlockDevice.open(uri('odd'), { size: 4096 }), 'BM_ERR_VOLUME_MISMATCH', 'size differs');
    const ok = await open(t, uri('odd'), { size: 1536 });
    assert.equal(ok.size, 1536);
    assert.equal(ok.blockSize, 512);
  });
});

describe('NbdBlockDevice connections and in-flight requests', () => {
  test('opens several connections only when the server advertises CAN_MULTI_CONN, and spreads requests over them', async (t) => {
    const backend = new GatedBackend(new MemoryBlockDevice(MiB));
    const { server, uri } = await serve(t, [
      { name: 'multi', readOnly: false, backend },
      { name: 'single', readOnly: false, backend: new MemoryBlockDevice(MiB), multiConn: false },
    ]);
    const sessions: string[] = [];
    server.on('session', (_client, name) => sessions.push(name));
    const multi = await open(t, uri('multi'), { connections: 4, maxInFlight: 2 });
    assert.equal(multi.connections, 4);
    assert.equal(sessions.filter((s) => s === 'multi').length, 4);
    const single = await open(t, uri('single'), { connections: 4 });
    assert.equal(single.connections, 1);
    assert.equal(sessions.filter((s) => s === 'single').length, 1);
    backend.hold('write');
    const writes = Array.from({ length: 8 }, (_, i) => multi.write(i * 4096, pattern(4096, i)));
    await backend.started(8);
    assert.equal(backend.active, 8, '4 connections × 2 in flight');
    backend.release();
    await Promise.all(writes);
    for (let i = 0; i < 8; i++) assert.deepEqual(await multi.read(i * 4096, 4096), pattern(4096, i));
  });

  test('at most maxInFlight requests per connection reach the server; the rest wait and all complete in order of their data', async (t) => {
    const backend = new GatedBackend(new MemoryBlockDevice(MiB));
    const { server, uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const device = await open(t, uri('disk'), { maxInFlight: 3 });
    backend.hold('write');
    const writes = Array.from({ length: 10 }, (_, i) => device.write(i * 4096, pattern(4096, i)));
    await backend.started(3);
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.equal(server.stats().requests, 3, 'only 3 requests were sent');
    backend.release();
    await Promise.all(writes);
    assert.equal(backend.maxActiveOf.get('write'), 3);
    assert.equal(server.stats().requests, 10);
  });
});

describe('NbdBlockDevice command mapping', () => {
  test('on NbdServer: FUA is native, trim and writeZeroes are WRITE_ZEROES (never TRIM), NO_HOLE passes through', async (t) => {
    const backend = new GatedBackend(new MemoryBlockDevice(MiB), { writeZeroes: true });
    const { server, uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const device = await open(t, uri('disk'));
    assert.deepEqual(device.supports, { trim: true, flush: true, fua: true, reopen: true, allocation: true });
    await device.write(0, pattern(8192, 1), { fua: true });
    assert.deepEqual(backend.calls.find((c) => c.op === 'write'), { op: 'write', offset: 0, length: 8192, fua: true }, 'the FUA flag reached the server');
    await device.trim(0, 4096);
    await device.writeZeroes(4096, 4096, { noHole: true, fua: true });
    assert.equal(backend.count('trim'), 0);
    assert.deepEqual(
      backend.calls.filter((c) => c.op === 'writeZeroes').map((c) => [c.offset, c.length, c.fua]),
      [
        [0, 4096, false],
        [4096, 4096, true],
      ],
    );
    assert.equal(server.stats().bytesZeroed, 8192);
    assert.equal(server.stats().bytesTrimmed, 0);
    assert.ok((await device.read(0, 8192)).every((b) => b === 0));
    const flushes = backend.count('flush');
    await device.flush();
    assert.equal(backend.count('flush'), flushes + 1);
  });

  test('a server without FUA and WRITE_ZEROES (nbdkit eval): FUA becomes write + FLUSH, trim writes zeroes', async (t) => {
    if (!requireTool('nbdkit', t)) return;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bm-eval-'));
    t.after(() => fsp.rm(dir, { recursive: true, force: true }));
    const image = path.join(dir, 'disk.img');
    const logfile = path.join(dir, 'log.txt');
    await fsp.writeFile(image, Buffer.alloc(MiB));
    const server = stopAfter(
      t,
      await startNbdkit(
        'eval',
        [
          `logfile=${logfile}`,
          `get_size=echo ${MiB}`,
          `pread=dd if=${image} iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none`,
          `pwrite=dd of=${image} oflag=seek_bytes conv=notrunc seek=$4 status=none`,
          'can_write=exit 0',
          'can_flush=exit 0',
          'flush=exit 0',
          'can_fua=echo none',
          'can_zero=exit 3',
          'can_trim=exit 3',
          'zeromode=none',
        ],
        ['--filter=log', '--filter=nozero'],
      ),
    );
    const device = await open(t, server.uri);
    assert.equal(device.transmissionFlags & (P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_WRITE_ZEROES), 0);
    assert.deepEqual(device.supports, { trim: true, flush: true, fua: true, reopen: true, allocation: true });
    await device.write(0, pattern(4096, 1), { fua: true });
    await device.trim(MiB - 8192, 8192);
    await device.close();
    await server.stop();
    const log = await fsp.readFile(logfile, 'utf8');
    const ops = [...log.matchAll(/ (Write|Flush|Zero|Trim) id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)(?: fua=(\d))?/g)].map(
      ([, op, offset, count, fua]) => `${op} ${Number(offset)} ${Number(count)}${fua === undefined ? '' : ` fua=${fua}`}`,
    );
    const flushes = [...log.matchAll(/ Flush id=\d+ \.\.\.$/gm)].length;
    assert.deepEqual(ops, ['Write 0 4096 fua=0', `Write ${MiB - 8192} 8192 fua=0`]);
    assert.equal(flushes, 1, 'the FUA write was followed by one flush');
    const bytes = await fsp.readFile(image);
    assert.deepEqual(bytes.subarray(0, 4096), pattern(4096, 1));
  });

  test('read-only export: writes, trims and zeroes are refused with BM_ERR_READ_ONLY without reaching the server; reads work', async (t) => {
    const mem = new MemoryBlockDevice(MiB);
    await mem.write(0, pattern(4096, 5));
    const { server, uri } = await serve(t, [{ name: 'ro', readOnly: true, backend: mem }]);
    const device = await open(t, uri('ro'));
    assert.equal(device.readOnly, true);
    const before = server.stats().requests;
    await rejectsWith(device.write(0, pattern(512, 1)), 'BM_ERR_READ_ONLY', 'write');
    await rejectsWith(device.trim(0, 512), 'BM_ERR_READ_ONLY', 'trim');
    await rejectsWith(device.writeZeroes(0, 512), 'BM_ERR_READ_ONLY', 'writeZeroes');
    assert.equal(server.stats().requests, before);
    assert.deepEqual(await device.read(0, 4096), pattern(4096, 5));
  });

  test('error replies map to coded errors: EIO → BM_ERR_IO, ENOSPC → BM_ERR_NO_SPACE, EINVAL → BM_ERR_INVALID_ARGUMENT; the connection keeps working', async (t) => {
    const mem = new MemoryBlockDevice(MiB);
    const failing: NbdBackend = {
      size: MiB,
      blockSize: 512,
      read: (offset, length) => (offset === 0 ? Promise.reject(new BlockMirrorError('BM_ERR_IO', 'bad sector')) : mem.read(offset, length)),
      write: (offset, data) => (offset >= MiB / 2 ? Promise.reject(new BlockMirrorError('BM_ERR_NO_SPACE', 'full')) : mem.write(offset, data)),
      flush: () => Promise.resolve(),
      trim: () => Promise.reject(new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'no')),
      writeZeroes: () => Promise.reject(new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'no')),
    };
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend: failing }]);
    for (const structuredReplies of [true, false]) {
      const device = await open(t, uri('disk'), { structuredReplies });
      const io = await rejectsWith(device.read(0, 4096), 'BM_ERR_IO', 'read of a bad sector');
      assert.equal(io.details.errno, P.NBD_EIO);
      await rejectsWith(device.write(MiB / 2, pattern(4096, 1)), 'BM_ERR_NO_SPACE', 'write');
      await rejectsWith(device.trim(0, 4096), 'BM_ERR_INVALID_ARGUMENT', 'zero');
      await device.write(4096, pattern(4096, 2));
      assert.deepEqual(await device.read(4096, 4096), pattern(4096, 2));
    }
  });
});

describe('NbdBlockDevice handshake failures', () => {
  test('unknown export, nothing listening, TLS URI, not an NBD server, a silent server (fake clock)', async (t) => {
    const { uri, port } = await serve(t, [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(MiB) }]);
    await rejectsWith(NbdBlockDevice.open(uri('nope')), 'BM_ERR_UNKNOWN_VOLUME', 'unknown export');
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen({ host: '127.0.0.1', port: 0 }, resolve));
    const freePort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await rejectsWith(NbdBlockDevice.open(`nbd://127.0.0.1:${freePort}/disk`), 'BM_ERR_CONNECT_FAILED', 'nothing listening');
    await rejectsWith(NbdBlockDevice.open(`nbds://127.0.0.1:${port}/disk`), 'BM_ERR_NOT_SUPPORTED', 'TLS');
    await rejectsWith(NbdBlockDevice.open('nbd+unix:///disk'), 'BM_ERR_INVALID_ARGUMENT', 'no socket');
    await rejectsWith(NbdBlockDevice.open(uri('disk'), { connections: 0 }), 'BM_ERR_INVALID_ARGUMENT', 'bad option');

    const sockets = new Set<net.Socket>();
    const odd = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
      if (oddMode === 'garbage') s.write(Buffer.from('SSH-2.0-OpenSSH_9.2 hello there\r\n'));
    });
    let oddMode: 'garbage' | 'silent' = 'garbage';
    t.after(() => {
      for (const s of sockets) s.destroy();
      odd.close();
    });
    await new Promise<void>((resolve) => odd.listen({ host: '127.0.0.1', port: 0 }, resolve));
    const oddUri = `nbd://127.0.0.1:${(odd.address() as net.AddressInfo).port}/disk`;
    await rejectsWith(NbdBlockDevice.open(oddUri), 'BM_ERR_BAD_MAGIC', 'not an NBD server');
    oddMode = 'silent';
    const { clock, tick } = fakeClock();
    const connected = new Promise<void>((resolve) => odd.once('connection', () => resolve()));
    const opening = NbdBlockDevice.open(oddUri, { clock, connectTimeout: 3000 });
    await connected;
    tick(3000);
    await rejectsWith(opening, 'BM_ERR_HANDSHAKE_TIMEOUT', 'a silent server');
  });
});

/**
 * A scripted NBD server: a correct fixed-newstyle handshake (structured
 * replies, no metadata contexts, a 1 MiB export), then `answer` decides the
 * bytes sent for each request.
 */
async function scriptedServer(t: TestContext, answer: (request: { type: number; handle: Buffer; offset: number; length: number }) => Buffer): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'requests' = 'flags';
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(P.NBD_INIT_MAGIC, 0);
    hello.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 8);
    hello.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
    socket.write(hello);
    const reply = (option: number, type: number, data = Buffer.alloc(0)): void => {
      const h = Buffer.alloc(20);
      h.writeBigUInt64BE(P.NBD_REP_MAGIC, 0);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(type, 12);
      h.writeUInt32BE(data.length, 16);
      socket.write(Buffer.concat([h, data]));
    };
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16 || buf.length < 16 + buf.readUInt32BE(12)) return;
          const option = buf.readUInt32BE(8);
          buf = buf.subarray(16 + buf.readUInt32BE(12));
          if (option === P.NBD_OPT_GO) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
            info.writeBigUInt64BE(BigInt(MiB), 2);
            info.writeUInt16BE(P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH, 10);
            reply(option, P.NBD_REP_INFO, info);
            reply(option, P.NBD_REP_ACK);
            phase = 'requests';
          } else {
            reply(option, P.NBD_REP_ACK);
          }
        } else {
          if (buf.length < 28) return;
          const type = buf.readUInt16BE(6);
          const length = buf.readUInt32BE(24);
          const payload = type === P.NBD_CMD_WRITE ? length : 0;
          if (buf.length < 28 + payload) return;
          socket.write(answer({ type, handle: Buffer.from(buf.subarray(8, 16)), offset: Number(buf.readBigUInt64BE(16)), length }));
          buf = buf.subarray(28 + payload);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return `nbd://127.0.0.1:${(server.address() as net.AddressInfo).port}/`;
}

function chunk(handle: Buffer, type: number, flags: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  handle.copy(h, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

describe('NbdBlockDevice against a misbehaving server', () => {
  test('reads assembled from several data and hole chunks in any order; an error chunk fails only its request', async (t) => {
    const uri = await scriptedServer(t, ({ type, handle, offset, length }) => {
      if (type !== P.NBD_CMD_READ) return chunk(handle, P.NBD_REPLY_TYPE_NONE, P.NBD_REPLY_FLAG_DONE, Buffer.alloc(0));
      if (offset === 0) {
        const err = Buffer.alloc(6 + 4);
        err.writeUInt32BE(P.NBD_EIO, 0);
        err.writeUInt16BE(4, 4);
        err.write('oops', 6);
        return chunk(handle, P.NBD_REPLY_TYPE_ERROR, P.NBD_REPLY_FLAG_DONE, err);
      }
      // second half as data first, then the first half as a hole
      const half = length / 2;
      const data = Buffer.alloc(8 + half, 0xab);
      data.writeBigUInt64BE(BigInt(offset + half), 0);
      const hole = Buffer.alloc(12);
      hole.writeBigUInt64BE(BigInt(offset), 0);
      hole.writeUInt32BE(half, 8);
      return Buffer.concat([chunk(handle, P.NBD_REPLY_TYPE_OFFSET_DATA, 0, data), chunk(handle, P.NBD_REPLY_TYPE_OFFSET_HOLE, P.NBD_REPLY_FLAG_DONE, hole)]);
    });
    const device = await open(t, uri);
    const back = await device.read(8192, 8192);
    assert.ok(back.subarray(0, 4096).every((b) => b === 0));
    assert.ok(back.subarray(4096).every((b) => b === 0xab));
    const err = await rejectsWith(device.read(0, 512), 'BM_ERR_IO', 'error chunk');
    assert.match(err.message, /oops/);
    assert.equal((await device.read(4096, 1024)).length, 1024, 'the connection still works');
  });

  test('a reply outside the request, or to an unknown handle, is a protocol violation: BM_ERR_PROTOCOL, connection dropped, the device reconnects', async (t) => {
    let mode: 'outside' | 'handle' | 'ok' = 'outside';
    const uri = await scriptedServer(t, ({ handle, offset, length }) => {
      if (mode === 'ok') {
        const data = Buffer.alloc(8 + length, 1);
        data.writeBigUInt64BE(BigInt(offset), 0);
        return chunk(handle, P.NBD_REPLY_TYPE_OFFSET_DATA, P.NBD_REPLY_FLAG_DONE, data);
      }
      const data = Buffer.alloc(8 + length);
      data.writeBigUInt64BE(BigInt(offset + 512), 0);
      const other = Buffer.from(handle);
      if (mode === 'handle') other.writeUInt32BE(0xdead, 4);
      return chunk(mode === 'handle' ? other : handle, P.NBD_REPLY_TYPE_OFFSET_DATA, P.NBD_REPLY_FLAG_DONE, mode === 'handle' ? data.subarray(0, 8 + 1) : data);
    });
    const { clock, tick } = fakeClock();
    const device = await open(t, uri, { clock, reconnectDelay: { min: 5, max: 5 } });
    for (const m of ['outside', 'handle'] as const) {
      mode = m;
      const down = onceEvent(device, 'disconnect');
      await rejectsWith(device.read(0, 512), 'BM_ERR_PROTOCOL', m);
      await down;
      mode = 'ok';
      const up = onceEvent(device, 'reconnect');
      tick(5);
      await up;
      assert.ok((await device.read(0, 512)).every((b) => b === 1));
    }
  });
});

describe('NbdBlockDevice allocation', () => {
  test('blockStatus on nbdkit memory and on NbdServer reports written ranges as data and the rest as zero holes', async (t) => {
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(4 * MiB) }]);
    const targets = [uri('disk')];
    if (requireTool('nbdkit', t)) targets.push(stopAfter(t, await startNbdkit('memory', ['4M'])).uri);
    for (const target of targets) {
      const device = await open(t, target);
      await device.write(MiB, pattern(64 * KiB, 1));
      await device.write(3 * MiB, pattern(128 * KiB, 2));
      const map = await device.blockStatus(0, 4 * MiB);
      const data = map.filter((e) => !e.zero).map((e) => [e.offset, e.length]);
      assert.deepEqual(data, [
        [MiB, 64 * KiB],
        [3 * MiB, 128 * KiB],
      ], target);
      assert.ok(map.filter((e) => e.zero).every((e) => e.hole), `${target}: zero ranges are holes`);
      await device.trim(MiB, 64 * KiB);
      assert.deepEqual((await device.blockStatus(MiB, 64 * KiB)).map((e) => e.zero), [true], `${target}: zeroed range`);
    }
  });

  test('without structured replies there is no allocation: supports.allocation is false and blockStatus is refused with BM_ERR_NOT_SUPPORTED', async (t) => {
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(MiB) }]);
    const device = await open(t, uri('disk'), { structuredReplies: false });
    assert.equal(device.supports.allocation, false);
    await rejectsWith(device.blockStatus(0, 4096), 'BM_ERR_NOT_SUPPORTED', 'blockStatus');
  });
});

describe('NbdBlockDevice reconnection', () => {
  test('a cut connection fails requests in flight and new ones with BM_ERR_DEVICE_UNAVAILABLE; reconnection backs off 100, 200, 400, 400 ms; then requests work and the first flush reports possibly lost writes once', async (t) => {
    const mem = new MemoryBlockDevice(MiB);
    const backend = new GatedBackend(mem);
    const { port } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const proxy = new CuttableProxy(port);
    const proxyPort = await proxy.listen();
    t.after(() => proxy.cut());
    const { clock, tick, delays } = fakeClock();
    const device = await open(t, `nbd://127.0.0.1:${proxyPort}/disk`, { clock, reconnectDelay: { min: 100, max: 400 } });
    const connectionErrors: string[] = [];
    device.on('connection-error', (e) => connectionErrors.push(e.code));

    await device.write(0, pattern(4096, 1));
    backend.hold('write');
    const inFlight = device.write(4096, pattern(4096, 2));
    await backend.started(2);
    const disconnected = onceEvent<[BlockMirrorError]>(device, 'disconnect');
    await proxy.cut();
    const [why] = await disconnected;
    assert.equal(why.code, 'BM_ERR_DEVICE_UNAVAILABLE');
    await rejectsWith(inFlight, 'BM_ERR_DEVICE_UNAVAILABLE', 'the write in flight at the cut');
    backend.release();
    assert.equal(device.connected, false);
    await rejectsWith(device.read(0, 4096), 'BM_ERR_DEVICE_UNAVAILABLE', 'a read while disconnected');
    await rejectsWith(device.write(0, pattern(512, 3)), 'BM_ERR_DEVICE_UNAVAILABLE', 'a write while disconnected');
    await rejectsWith(device.flush(), 'BM_ERR_DEVICE_UNAVAILABLE', 'a flush while disconnected');

    // three refused attempts: 100, 200, 400 ms apart
    const setTimeoutsBefore = delays.length;
    for (const ms of [100, 200, 400]) {
      const failed = onceEvent(device, 'connection-error');
      tick(ms);
      await failed;
    }
    const backoff = delays.slice(setTimeoutsBefore - 1).filter((ms) => ms !== 10_000);
    assert.deepEqual(backoff, [100, 200, 400, 400], 'backoff delays (connect timeouts excluded)');

    await proxy.listen(proxyPort);
    const reconnected = onceEvent(device, 'reconnect');
    tick(400);
    await reconnected;
    assert.equal(device.connected, true);
    assert.deepEqual(await device.read(0, 4096), pattern(4096, 1));
    const lost = await rejectsWith(device.flush(), 'BM_ERR_IO', 'the first flush after the loss');
    assert.match(lost.message, /may be lost/);
    await device.flush();
    await device.write(8192, pattern(4096, 4), { fua: true });
    assert.deepEqual(await mem.read(8192, 4096), pattern(4096, 4));
    assert.deepEqual(connectionErrors, ['BM_ERR_DEVICE_UNAVAILABLE', 'BM_ERR_CONNECT_FAILED', 'BM_ERR_CONNECT_FAILED', 'BM_ERR_CONNECT_FAILED']);
  });

  test('a reconnection to a different export (size changed) is refused with BM_ERR_VOLUME_MISMATCH and retried', async (t) => {
    let current: NbdBackend = new MemoryBlockDevice(MiB);
    const { port } = await serve(t, () => [{ name: 'disk', readOnly: false, backend: current }]);
    const proxy = new CuttableProxy(port);
    const proxyPort = await proxy.listen();
    t.after(() => proxy.cut());
    const { clock, tick } = fakeClock();
    const device = await open(t, `nbd://127.0.0.1:${proxyPort}/disk`, { clock, reconnectDelay: { min: 50, max: 50 } });
    const disconnected = onceEvent(device, 'disconnect');
    await proxy.cut();
    await disconnected;
    current = new MemoryBlockDevice(2 * MiB);
    await proxy.listen(proxyPort);
    const refused = onceEvent<[BlockMirrorError]>(device, 'connection-error');
    tick(50);
    const [error] = await refused;
    assert.equal(error.code, 'BM_ERR_VOLUME_MISMATCH');
    assert.equal(device.connected, false);
    current = new MemoryBlockDevice(MiB);
    const reconnected = onceEvent(device, 'reconnect');
    tick(50);
    await reconnected;
    assert.equal(device.connected, true);
  });

  test('close() during an outage stops reconnecting and rejects with BM_ERR_CLOSED', async (t) => {
    const { port } = await serve(t, [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(MiB) }]);
    const proxy = new CuttableProxy(port);
    const proxyPort = await proxy.listen();
    t.after(() => proxy.cut());
    const { clock, tick } = fakeClock();
    const device = await NbdBlockDevice.open(`nbd://127.0.0.1:${proxyPort}/disk`, { clock, reconnectDelay: { min: 10, max: 10 } });
    const disconnected = onceEvent(device, 'disconnect');
    await proxy.cut();
    await disconnected;
    await device.close();
    await proxy.listen(proxyPort);
    tick(100);
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.equal(proxy.accepted, 1, 'no reconnection after close');
    await rejectsWith(device.read(0, 512), 'BM_ERR_CLOSED', 'read after close');
  });
});

describe('NbdBlockDevice as a primary volume', () => {
  test('while the NBD server is unreachable a sync write fails with BM_ERR_DEVICE_UNAVAILABLE as a local error (the range needs a resync); after the reconnection a resync makes the mirror equal', async (t) => {
    const mem = new MemoryBlockDevice(MiB);
    const { port } = await serve(t, [{ name: 'disk', readOnly: false, backend: mem }]);
    const proxy = new CuttableProxy(port);
    const proxyPort = await proxy.listen();
    const { clock, tick } = fakeClock();
    const device = await NbdBlockDevice.open(`nbd://127.0.0.1:${proxyPort}/disk`, { clock, reconnectDelay: { min: 20, max: 20 } });
    const pair = await startPair([{ name: 'vol0', mode: 'sync', primaryDevice: device }]);
    defer(t, () => proxy.cut());
    defer(t, () => device.close());
    defer(t, () => pair.close());
    const volume = pair.primary.volume('vol0');
    const first = pattern(8192, 1);
    assert.equal((await volume.write(0, first)).mirror, 'acknowledged');

    const disconnected = onceEvent(device, 'disconnect');
    await proxy.cut();
    await disconnected;
    await rejectsWith(volume.write(64 * KiB, pattern(4096, 2)), 'BM_ERR_DEVICE_UNAVAILABLE', 'a write while the NBD server is unreachable');
    assert.notEqual(volume.status().state, 'in-sync', 'the volume does not claim to be in sync');

    await proxy.listen(proxyPort);
    const reconnected = onceEvent(device, 'reconnect');
    tick(20);
    await reconnected;
    await pair.primary.resync('vol0');
    assert.equal((await volume.write(128 * KiB, pattern(4096, 3))).mirror, 'acknowledged');
    assert.ok(await imagesEqual(pair, 'vol0'), 'primary (NBD) and mirror images are equal');
    assert.deepEqual(await mem.read(0, 8192), first);
  });
});

describe('NbdBlockDevice request timeout', () => {
  test('a request without a reply within requestTimeout rejects with BM_ERR_TIMEOUT (fake clock); its connection is reset, the others on it fail as unavailable, the device reconnects', async (t) => {
    const backend = new GatedBackend(new MemoryBlockDevice(MiB));
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const { clock, tick } = fakeClock();
    const device = await open(t, uri('disk'), { clock, requestTimeout: 5000, reconnectDelay: { min: 100, max: 100 } });
    t.after(() => backend.release());
    backend.hold('write');
    const stuck = device.write(0, pattern(4096, 1));
    await backend.started(1);
    tick(2000);
    const other = device.write(8192, pattern(4096, 2));
    await backend.started(2);
    tick(2999);
    let settled = false;
    void stuck.catch(() => undefined).then(() => (settled = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(settled, false, 'not before the timeout');
    const reconnected = onceEvent(device, 'reconnect');
    tick(1);
    const error = await rejectsWith(stuck, 'BM_ERR_TIMEOUT', 'the timed-out write');
    assert.deepEqual(error.details, { op: 'NBD_CMD_WRITE', offset: 0, length: 4096, timeout: 5000 });
    await rejectsWith(other, 'BM_ERR_DEVICE_UNAVAILABLE', 'another write on the reset connection');
    backend.release();
    tick(100);
    await reconnected;
    await device.write(0, pattern(4096, 3));
    assert.deepEqual(await device.read(0, 4096), pattern(4096, 3));
  });
});
