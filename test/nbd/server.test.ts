/**
 * NbdServer against a byte-level client on real sockets (127.0.0.1, port 0):
 * handshake, option replies, transmission, limits, hostile input, concurrency,
 * shutdown. Real NBD tools are exercised in clients.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { createClock } from '@sinonjs/fake-timers';
import fc from 'fast-check';
import { clockFrom } from '../../src/clock.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError } from '../../src/errors.js';
import type { NbdBackend, NbdExport } from '../../src/nbd/export.js';
import { nbdErrorFor, validateNbdExport } from '../../src/nbd/export.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdClientInfo, NbdServerOptions } from '../../src/nbd/server.js';
import { GatedBackend, RawClient, u32 } from './raw-client.js';

const MiB = 1024 * 1024;

interface Started {
  server: NbdServer;
  port: number;
  errors: BlockMirrorError[];
}

async function start(t: TestContext, options: NbdServerOptions): Promise<Started> {
  const server = new NbdServer(options);
  const errors: BlockMirrorError[] = [];
  server.on('error', (e) => errors.push(e));
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  return { server, port, errors };
}

async function client(t: TestContext, port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  t.after(() => c.destroy());
  return c;
}

/** Next `error` event of the server. */
function nextError(server: NbdServer): Promise<[BlockMirrorError, NbdClientInfo | undefined]> {
  return new Promise((resolve) => server.once('error', (e, c) => resolve([e, c])));
}

/** Lets pending I/O callbacks and microtasks run (a few event-loop turns), without timers. */
async function turns(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function mem(size = 1 * MiB, blockSize = 512): MemoryBlockDevice {
  return new MemoryBlockDevice(size, { blockSize });
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function rw(name: string, backend: NbdBackend, extra: Partial<NbdExport> = {}): NbdExport {
  return { name, readOnly: false, backend, ...extra };
}

/** A client known to work, used to show that hostile clients do not disturb others. */
async function goodClient(t: TestContext, port: number, name = 'disk'): Promise<RawClient> {
  const c = await client(t, port);
  await c.go(name);
  return c;
}

async function assertWorks(c: RawClient, handle: number, offset = 0): Promise<void> {
  const data = pattern(4096, handle);
  assert.equal(await c.writeAt(handle, offset, data), 0);
  const r = await c.readAt(handle + 1, offset, 4096);
  assert.equal(r.error, 0);
  assert.deepEqual(r.data, data);
}

describe('NbdServer handshake', () => {
  test('greeting advertises fixed newstyle and no-zeroes', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    assert.equal(await c.greeting(), P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
  });

  test('NBD_OPT_LIST returns every export with its description, then ACK', async (t) => {
    const { port } = await start(t, {
      exports: [rw('disk', mem(), { description: 'first disk' }), { name: 'ro', readOnly: true, backend: mem() }],
    });
    const c = await client(t, port);
    await c.handshake();
    await c.sendOption(P.NBD_OPT_LIST);
    const names: [string, string][] = [];
    for (;;) {
      const r = await c.optionReply();
      assert.equal(r.option, P.NBD_OPT_LIST);
      if (r.type === P.NBD_REP_ACK) break;
      assert.equal(r.type, P.NBD_REP_SERVER);
      const len = r.data.readUInt32BE(0);
      names.push([r.data.subarray(4, 4 + len).toString(), r.data.subarray(4 + len).toString()]);
    }
    assert.deepEqual(names, [
      ['disk', 'first disk'],
      ['ro', ''],
    ]);
    // LIST with data is invalid, and the session continues.
    await c.sendOption(P.NBD_OPT_LIST, Buffer.from('x'));
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_INVALID);
    assert.equal((await c.infoOrGo(P.NBD_OPT_GO, 'disk')).final, P.NBD_REP_ACK);
    await assertWorks(c, 1);
  });

  test('NBD_OPT_INFO reports size, flags, name, description and block sizes; GO enters transmission', async (t) => {
    const { port } = await start(t, {
      exports: [rw('disk', mem(2 * MiB, 4096), { description: 'the disk' })],
      maxPayload: 1 * MiB,
    });
    const c = await client(t, port);
    await c.handshake();
    const info = await c.infoOrGo(P.NBD_OPT_INFO, 'disk', [P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE]);
    assert.equal(info.final, P.NBD_REP_ACK);
    const exp = info.infos.get(P.NBD_INFO_EXPORT)!;
    assert.equal(exp.length, 12);
    assert.equal(Number(exp.readBigUInt64BE(2)), 2 * MiB);
    const flags = exp.readUInt16BE(10);
    assert.equal(flags & P.NBD_FLAG_HAS_FLAGS, P.NBD_FLAG_HAS_FLAGS);
    assert.equal(info.infos.get(P.NBD_INFO_NAME)!.subarray(2).toString(), 'disk');
    assert.equal(info.infos.get(P.NBD_INFO_DESCRIPTION)!.subarray(2).toString(), 'the disk');
    const bs = info.infos.get(P.NBD_INFO_BLOCK_SIZE)!;
    assert.equal(bs.length, 14);
    assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [4096, 4096, 1 * MiB]);
    // INFO does not enter transmission: GO does, with the same information.
    const go = await c.infoOrGo(P.NBD_OPT_GO, 'disk', []);
    assert.equal(go.final, P.NBD_REP_ACK);
    assert.equal(go.infos.get(P.NBD_INFO_EXPORT)!.readUInt16BE(10), flags);
    await assertWorks(c, 1);
  });

  test('INFO/GO errors: unknown export, malformed data; the session continues', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    assert.equal((await c.infoOrGo(P.NBD_OPT_GO, 'nope')).final, P.NBD_REP_ERR_UNKNOWN);
    // name length larger than the data
    const bad = Buffer.alloc(8);
    bad.writeUInt32BE(100, 0);
    await c.sendOption(P.NBD_OPT_INFO, bad);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_INVALID);
    // count of info requests inconsistent with the length
    const bad2 = Buffer.alloc(6);
    bad2.writeUInt16BE(3, 4);
    await c.sendOption(P.NBD_OPT_GO, bad2);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_INVALID);
    assert.equal((await c.infoOrGo(P.NBD_OPT_GO, 'disk')).final, P.NBD_REP_ACK);
    await assertWorks(c, 1);
  });

  test('unknown options, STARTTLS and extended headers get NBD_REP_ERR_UNSUP; the next option is parsed', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    for (const opt of [0x1234, P.NBD_OPT_STARTTLS, P.NBD_OPT_EXTENDED_HEADERS]) {
      await c.sendOption(opt, Buffer.from('some option data that must be skipped'));
      const r = await c.optionReply();
      assert.equal(r.option, opt);
      assert.equal(r.type, P.NBD_REP_ERR_UNSUP);
    }
    assert.equal((await c.infoOrGo(P.NBD_OPT_GO, 'disk')).final, P.NBD_REP_ACK);
    await assertWorks(c, 1);
  });

  test('NBD_OPT_EXPORT_NAME: 124 zero bytes unless NO_ZEROES was negotiated', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem(MiB))] });
    for (const noZeroes of [false, true]) {
      const c = await client(t, port);
      await c.handshake(P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0));
      await c.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
      const reply = await c.read(noZeroes ? 10 : 134);
      assert.equal(Number(reply.readBigUInt64BE(0)), MiB);
      assert.equal(reply.readUInt16BE(8) & P.NBD_FLAG_HAS_FLAGS, P.NBD_FLAG_HAS_FLAGS);
      if (!noZeroes) assert.ok(reply.subarray(10).every((b) => b === 0));
      await assertWorks(c, 10);
      assert.equal(c.buffered, 0);
      await c.disconnect();
    }
  });

  test('NBD_OPT_EXPORT_NAME of an unknown export terminates the session', async (t) => {
    const { server, port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    const err = nextError(server);
    await c.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('missing'));
    assert.equal((await c.waitClosed()).length, 0);
    assert.equal((await err)[0].code, 'BM_ERR_UNKNOWN_VOLUME');
  });

  test('NBD_OPT_ABORT is acknowledged, then the server closes', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    await c.sendOption(P.NBD_OPT_ABORT);
    const r = await c.optionReply();
    assert.equal(r.type, P.NBD_REP_ACK);
    await c.waitClosed();
  });

  test('clients without fixed newstyle, or with unknown client flags, are disconnected', async (t) => {
    const { server, port } = await start(t, { exports: [rw('disk', mem())] });
    for (const flags of [0, P.NBD_FLAG_C_NO_ZEROES, 0xffffffff, P.NBD_FLAG_C_FIXED_NEWSTYLE | 4]) {
      const c = await client(t, port);
      const err = nextError(server);
      await c.handshake(flags);
      await c.waitClosed();
      assert.equal((await err)[0].code, 'BM_ERR_PROTOCOL');
    }
  });

  test('the empty name selects the default export', async (t) => {
    const { port } = await start(t, { exports: [rw('a', mem()), rw('b', mem(2 * MiB))], defaultExport: 'b' });
    const c = await client(t, port);
    const { size } = await c.go('');
    assert.equal(size, 2 * MiB);
  });

  test('exports from a lookup function are read on every option', async (t) => {
    const list: NbdExport[] = [rw('one', mem())];
    const { port } = await start(t, { exports: async () => list });
    const c1 = await client(t, port);
    await c1.handshake();
    assert.equal((await c1.infoOrGo(P.NBD_OPT_INFO, 'two')).final, P.NBD_REP_ERR_UNKNOWN);
    list.push(rw('two', mem(2 * MiB)));
    const go = await c1.infoOrGo(P.NBD_OPT_GO, 'two');
    assert.equal(go.final, P.NBD_REP_ACK);
    assert.equal(Number(go.infos.get(P.NBD_INFO_EXPORT)!.readBigUInt64BE(2)), 2 * MiB);
  });
});

describe('NbdServer transmission flags', () => {
  test('flags follow the export: read-only, trim only with backend.trim, multi-conn unless disabled, fast zero only with backend.blockStatus', async (t) => {
    const noTrim: NbdBackend = {
      size: MiB,
      blockSize: 512,
      read: (o, l) => Promise.resolve(Buffer.alloc(l)),
      write: () => Promise.resolve(),
      flush: () => Promise.resolve(),
    };
    const { port } = await start(t, {
      exports: [
        rw('rw', mem()),
        rw('notrim', noTrim, { multiConn: false }),
        { name: 'ro', readOnly: true, backend: mem() },
      ],
    });
    const flagsOf = async (name: string, structured = false): Promise<number> => {
      const c = await client(t, port);
      return (await c.go(name, { structured })).flags;
    };
    const base = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_CACHE;
    const writable = P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_WRITE_ZEROES;
    assert.equal(await flagsOf('rw'), base | writable | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_CAN_MULTI_CONN | P.NBD_FLAG_SEND_FAST_ZERO);
    assert.equal(await flagsOf('notrim'), base | writable);
    assert.equal(await flagsOf('ro'), base | P.NBD_FLAG_READ_ONLY | P.NBD_FLAG_CAN_MULTI_CONN);
    // DF only once structured replies are negotiated.
    assert.equal(await flagsOf('ro', true), base | P.NBD_FLAG_READ_ONLY | P.NBD_FLAG_CAN_MULTI_CONN | P.NBD_FLAG_SEND_DF);
  });
});

describe('NbdServer fast zero', () => {
  test('SEND_FAST_ZERO: a fast zero of a range the backend knows is zero succeeds; of a range holding data it fails with ENOTSUP and changes nothing; without blockStatus the flag is EINVAL', async (t) => {
    const dev = mem(4 * MiB);
    await dev.write(MiB, Buffer.alloc(4096, 7));
    const noStatus: NbdBackend = {
      size: MiB,
      blockSize: 512,
      read: (o, l) => Promise.resolve(Buffer.alloc(l)),
      write: () => Promise.resolve(),
      flush: () => Promise.resolve(),
    };
    const { port } = await start(t, { exports: [rw('disk', dev), rw('plain', noStatus)] });
    const c = await client(t, port);
    const { flags } = await c.go('disk');
    assert.equal(flags & P.NBD_FLAG_SEND_FAST_ZERO, P.NBD_FLAG_SEND_FAST_ZERO, 'advertised');
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 1, 2 * MiB, MiB, P.NBD_CMD_FLAG_FAST_ZERO);
    assert.equal((await c.simpleReply()).error, 0, 'a hole: the zero is free');
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 2, 0, 2 * MiB, P.NBD_CMD_FLAG_FAST_ZERO);
    assert.equal((await c.simpleReply()).error, P.NBD_ENOTSUP, 'data inside: not faster than writing');
    assert.equal((await dev.read(MiB, 4096))[0], 7, 'nothing was zeroed');
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 3, 0, 2 * MiB);
    assert.equal((await c.simpleReply()).error, 0, 'without the flag the zero is done');
    assert.equal((await dev.read(MiB, 4096))[0], 0);
    const plain = await client(t, port);
    const other = await plain.go('plain');
    assert.equal(other.flags & P.NBD_FLAG_SEND_FAST_ZERO, 0, 'not advertised without blockStatus');
    await plain.sendRequest(P.NBD_CMD_WRITE_ZEROES, 4, 0, 4096, P.NBD_CMD_FLAG_FAST_ZERO);
    assert.equal((await plain.simpleReply()).error, P.NBD_EINVAL);
  });
});

describe('NbdServer transmission', () => {
  test('READ, WRITE (with FUA), FLUSH, TRIM and WRITE_ZEROES reach the backend', async (t) => {
    const dev = mem(4 * MiB);
    const backend = new GatedBackend(dev);
    const { port, server } = await start(t, { exports: [rw('disk', backend)] });
    const c = await goodClient(t, port);
    const data = pattern(64 * 1024, 1);
    assert.equal(await c.writeAt(1, 8192, data), 0);
    assert.deepEqual(await dev.read(8192, data.length), data);
    // FUA on a backend whose write() does not honour it (memory: supports.fua false): write, then flush.
    assert.equal(await c.writeAt(2, 0, pattern(512, 2), P.NBD_CMD_FLAG_FUA), 0);
    assert.deepEqual(backend.calls.slice(-2).map((x) => [x.op, x.fua]), [
      ['write', true],
      ['flush', false],
    ]);
    await c.sendRequest(P.NBD_CMD_FLUSH, 3, 0, 0);
    assert.deepEqual(await c.simpleReply(), { error: 0, handle: 3, data: Buffer.alloc(0) });
    assert.equal(backend.calls.at(-1)!.op, 'flush');
    await c.sendRequest(P.NBD_CMD_TRIM, 4, 8192, 4096);
    assert.equal((await c.simpleReply()).error, 0);
    assert.deepEqual(backend.calls.at(-1), { op: 'trim', offset: 8192, length: 4096, fua: false });
    assert.ok((await dev.read(8192, 4096)).every((b) => b === 0));
    // WRITE_ZEROES without backend.writeZeroes: written as zero buffers of at most 1 MiB.
    await dev.write(MiB, pattern(3 * MiB, 3));
    const before = backend.calls.length;
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 5, MiB, 3 * MiB - 512, P.NBD_CMD_FLAG_NO_HOLE);
    assert.equal((await c.simpleReply()).error, 0);
    const zeroWrites = backend.calls.slice(before);
    assert.ok(zeroWrites.length >= 3 && zeroWrites.every((x) => x.op === 'write' && x.length <= MiB));
    assert.ok((await dev.read(MiB, 3 * MiB - 512)).every((b) => b === 0));
    assert.notEqual((await dev.read(4 * MiB - 512, 512)).at(-1), 0);
    const r = await c.readAt(6, 8192 + 4096, 8192);
    assert.deepEqual(r.data, data.subarray(4096, 4096 + 8192));
    const stats = server.stats();
    assert.equal(stats.bytesWritten, 64 * 1024 + 512);
    assert.equal(stats.bytesRead, 8192);
    assert.equal(stats.bytesZeroed, 3 * MiB - 512);
    assert.equal(stats.bytesTrimmed, 4096);
    assert.equal(stats.requests, 6);
    assert.equal(stats.errors, 0);
    assert.equal(stats.connections, 1);
  });

  test('WRITE_ZEROES uses backend.writeZeroes when present, passing FUA', async (t) => {
    const backend = new GatedBackend(mem(), { writeZeroes: true });
    const { port } = await start(t, { exports: [rw('disk', backend)] });
    const c = await goodClient(t, port);
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 1, 4096, 8192, P.NBD_CMD_FLAG_FUA);
    assert.equal((await c.simpleReply()).error, 0);
    assert.equal(backend.calls[0]!.op, 'writeZeroes');
    assert.equal(backend.calls[0]!.fua, true);
  });

  test('read-only export: WRITE, TRIM and WRITE_ZEROES get EPERM, the backend is never called, the stream stays in sync', async (t) => {
    const dev = mem();
    await dev.write(0, pattern(4096, 9));
    const backend = new GatedBackend(dev);
    const { port } = await start(t, { exports: [{ name: 'ro', readOnly: true, backend }] });
    const c = await goodClient(t, port, 'ro');
    assert.equal(await c.writeAt(1, 0, Buffer.alloc(4096, 0xee)), P.NBD_EPERM);
    await c.sendRequest(P.NBD_CMD_TRIM, 2, 0, 4096);
    assert.equal((await c.simpleReply()).error, P.NBD_EPERM);
    await c.sendRequest(P.NBD_CMD_WRITE_ZEROES, 3, 0, 4096);
    assert.equal((await c.simpleReply()).error, P.NBD_EPERM);
    const r = await c.readAt(4, 0, 4096);
    assert.deepEqual(r.data, pattern(4096, 9));
    assert.deepEqual(backend.calls.map((x) => x.op), ['read']);
  });

  test('out-of-range, misaligned, over-long and unknown requests get errors; the connection keeps working', async (t) => {
    const backend = new GatedBackend(mem(MiB, 512));
    const { port, server } = await start(t, { exports: [rw('disk', backend)], maxPayload: 64 * 1024 });
    const c = await goodClient(t, port);
    const other = await goodClient(t, port);
    // Read past the end: EINVAL, no payload.
    assert.equal((await c.readAt(1, MiB - 512, 1024)).error, P.NBD_EINVAL);
    // Offset beyond 2^53.
    await c.sendRequest(P.NBD_CMD_READ, 2, 2 ** 60, 512);
    assert.equal((await c.simpleReply()).error, P.NBD_EINVAL);
    // Write past the end: ENOSPC (as the spec asks), its payload consumed.
    assert.equal(await c.writeAt(3, MiB - 512, Buffer.alloc(1024, 1)), P.NBD_ENOSPC);
    // Misaligned read and write.
    assert.equal((await c.readAt(4, 100, 512)).error, P.NBD_EINVAL);
    assert.equal(await c.writeAt(5, 0, Buffer.alloc(100, 1)), P.NBD_EINVAL);
    // Read longer than maxPayload.
    assert.equal((await c.readAt(6, 0, 128 * 1024)).error, P.NBD_EINVAL);
    // Unknown command, BLOCK_STATUS without meta contexts, unknown flags.
    await c.sendRequest(99, 7, 0, 512);
    assert.equal((await c.simpleReply()).error, P.NBD_EINVAL);
    await c.sendRequest(P.NBD_CMD_BLOCK_STATUS, 8, 0, 512);
    assert.equal((await c.simpleReply()).error, P.NBD_EINVAL);
    await c.sendRequest(P.NBD_CMD_READ, 9, 0, 512, 0x100);
    assert.equal((await c.simpleReply()).error, P.NBD_EINVAL);
    await c.sendRequest(P.NBD_CMD_READ, 10, 0, 512, P.NBD_CMD_FLAG_DF); // DF needs structured replies
    assert.equal((await c.simpleReply()).error, P.NBD_EINVAL);
    // Nothing reached the backend; the connection still works, and so does the other client.
    assert.equal(backend.calls.length, 0);
    assert.equal(server.stats().errors, 10);
    await assertWorks(c, 20);
    await assertWorks(other, 30, 8192);
  });

  test('a WRITE longer than maxPayload: EINVAL with its payload skipped (≤ 32 MiB), hard disconnect above, nothing allocated first', async (t) => {
    const backend = new GatedBackend(mem(MiB));
    const { port, server } = await start(t, { exports: [rw('disk', backend)], maxPayload: 64 * 1024 });
    const c = await goodClient(t, port);
    const other = await goodClient(t, port);
    // 256 KiB > 64 KiB limit: refused, payload read and dropped, stream in sync.
    assert.equal(await c.writeAt(1, 0, Buffer.alloc(256 * 1024, 7)), P.NBD_EINVAL);
    await assertWorks(c, 2);
    // A header announcing 4 GiB - 1: the server closes at once, without waiting for (or buffering) the payload.
    const err = nextError(server);
    await c.sendRequest(P.NBD_CMD_WRITE, 3, 0, 0xffffffff);
    assert.equal((await c.waitClosed()).length, 0);
    const [e] = await err;
    assert.equal(e.code, 'BM_ERR_FRAME_TOO_LARGE');
    assert.equal(backend.count('write'), 1);
    await assertWorks(other, 10);
  });

  test('a bad request magic closes only that connection', async (t) => {
    const { port, server } = await start(t, { exports: [rw('disk', mem())] });
    const c = await goodClient(t, port);
    const other = await goodClient(t, port);
    await assertWorks(c, 1);
    const err = nextError(server);
    const req = RawClient.request(P.NBD_CMD_READ, 2, 0, 512);
    req.writeUInt32BE(0xdeadbeef, 0);
    await c.write(req);
    await c.waitClosed();
    assert.equal((await err)[0].code, 'BM_ERR_BAD_MAGIC');
    await assertWorks(other, 10);
    assert.equal(server.stats().protocolErrors, 1);
  });

  test('backend errors map to NBD errors', async (t) => {
    const failing: NbdBackend = {
      size: MiB,
      blockSize: 512,
      read: () => Promise.reject(new BlockMirrorError('BM_ERR_IO', 'disk on fire')),
      write: (offset) =>
        Promise.reject(
          offset === 0
            ? new BlockMirrorError('BM_ERR_NO_SPACE', 'full')
            : offset === 512
              ? new BlockMirrorError('BM_ERR_READ_ONLY', 'ro')
              : new Error('plain error'),
        ),
      flush: () => Promise.reject(Object.assign(new Error('quota'), { code: 'EDQUOT' })),
      // A backend that throws instead of rejecting.
      trim: () => {
        throw new Error('synchronous failure');
      },
    };
    // A broken backend returning a short read must not desynchronise the stream.
    const short: NbdBackend = { ...failing, read: () => Promise.resolve(Buffer.alloc(10)) };
    const { port } = await start(t, { exports: [rw('bad', failing), rw('short', short)] });
    const c = await goodClient(t, port, 'bad');
    assert.equal((await c.readAt(1, 0, 512)).error, P.NBD_EIO);
    assert.equal(await c.writeAt(2, 0, Buffer.alloc(512)), P.NBD_ENOSPC);
    assert.equal(await c.writeAt(3, 512, Buffer.alloc(512)), P.NBD_EPERM);
    assert.equal(await c.writeAt(4, 1024, Buffer.alloc(512)), P.NBD_EIO);
    await c.sendRequest(P.NBD_CMD_FLUSH, 5, 0, 0);
    assert.equal((await c.simpleReply()).error, P.NBD_ENOSPC);
    await c.sendRequest(P.NBD_CMD_TRIM, 6, 0, 512);
    assert.equal((await c.simpleReply()).error, P.NBD_EIO);
    const s = await goodClient(t, port, 'short');
    assert.equal((await s.readAt(6, 0, 512)).error, P.NBD_EIO);
    assert.equal((await s.readAt(7, 0, 512)).error, P.NBD_EIO);
  });
});

describe('NbdServer stream parsing', () => {
  test('requests split at every byte boundary (one byte per write)', async (t) => {
    const dev = mem();
    const { port } = await start(t, { exports: [rw('disk', dev)] });
    const c = await client(t, port);
    await c.greeting();
    const name = Buffer.from('disk');
    const goData = Buffer.concat([u32(name.length), name, Buffer.from([0, 0])]);
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
    head.writeUInt32BE(P.NBD_OPT_GO, 8);
    head.writeUInt32BE(goData.length, 12);
    const writes = [0, 1, 2].map((i) => RawClient.request(P.NBD_CMD_WRITE, 100 + i, i * 1024, 512, 0, pattern(512, i)));
    const stream = Buffer.concat([
      u32(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES),
      head,
      goData,
      ...writes,
      RawClient.request(P.NBD_CMD_READ, 200, 1024, 512),
    ]);
    for (let i = 0; i < stream.length; i++) await c.write(stream.subarray(i, i + 1));
    for (;;) {
      const r = await c.optionReply();
      if (r.type === P.NBD_REP_ACK) break;
      assert.equal(r.type, P.NBD_REP_INFO);
    }
    const handles = new Set<number>();
    for (let i = 0; i < 3; i++) {
      const r = await c.simpleReply();
      assert.equal(r.error, 0);
      handles.add(r.handle);
    }
    assert.deepEqual([...handles].sort(), [100, 101, 102]);
    const r = await c.simpleReply(512);
    assert.equal(r.handle, 200);
    assert.deepEqual(r.data, pattern(512, 1));
  });

  test('many requests in one chunk, and any split of a request stream, give the same results', async (t) => {
    const dev = mem(MiB);
    const { port } = await start(t, { exports: [rw('disk', dev)] });
    const c = await goodClient(t, port);
    // 100 writes + 100 reads in a single write() call.
    const reqs: Buffer[] = [];
    for (let i = 0; i < 100; i++) reqs.push(RawClient.request(P.NBD_CMD_WRITE, i, i * 4096, 1024, 0, pattern(1024, i)));
    await c.write(Buffer.concat(reqs));
    for (let i = 0; i < 100; i++) assert.equal((await c.simpleReply()).error, 0);
    await c.write(Buffer.concat(Array.from({ length: 100 }, (_, i) => RawClient.request(P.NBD_CMD_READ, 1000 + i, i * 4096, 1024))));
    for (let i = 0; i < 100; i++) {
      const r = await c.simpleReply(1024);
      assert.equal(r.error, 0);
      assert.deepEqual(r.data, pattern(1024, r.handle - 1000));
    }
    // Random splits of a mixed stream (writes with payloads, reads, flush), sent piece by piece.
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(fc.integer({ min: 1, max: 3 * (28 + 512) + 2 * 28 - 1 }), { maxLength: 12 }), async (cuts) => {
        run++;
        const base = 256 * 1024 + (run % 8) * 8192;
        const body = Buffer.concat([
          RawClient.request(P.NBD_CMD_WRITE, 1, base, 512, 0, pattern(512, run)),
          RawClient.request(P.NBD_CMD_WRITE, 2, base + 512, 512, P.NBD_CMD_FLAG_FUA, pattern(512, run + 1)),
          RawClient.request(P.NBD_CMD_FLUSH, 3, 0, 0),
          RawClient.request(P.NBD_CMD_WRITE, 4, base + 1024, 512, 0, pattern(512, run + 2)),
          RawClient.request(P.NBD_CMD_FLUSH, 5, 0, 0),
        ]);
        const points = [0, ...cuts.filter((x) => x < body.length).sort((a, b) => a - b), body.length];
        for (let i = 0; i + 1 < points.length; i++) await c.write(body.subarray(points[i], points[i + 1]));
        const seen: number[] = [];
        for (let i = 0; i < 5; i++) {
          const r = await c.simpleReply();
          assert.equal(r.error, 0);
          seen.push(r.handle);
        }
        assert.deepEqual(seen.sort(), [1, 2, 3, 4, 5]);
        const r = await c.readAt(9, base, 1536);
        assert.deepEqual(r.data, Buffer.concat([pattern(512, run), pattern(512, run + 1), pattern(512, run + 2)]));
      }),
      { numRuns: 25 },
    );
  });
});

describe('NbdServer concurrency', () => {
  test('requests run concurrently and replies may overtake each other', async (t) => {
    const backend = new GatedBackend(mem());
    const { port } = await start(t, { exports: [rw('disk', backend)] });
    const c = await goodClient(t, port);
    backend.hold('read');
    await c.write(
      Buffer.concat([
        RawClient.request(P.NBD_CMD_READ, 1, 0, 512),
        RawClient.request(P.NBD_CMD_WRITE, 2, 4096, 512, 0, pattern(512, 2)),
      ]),
    );
    const first = await c.simpleReply();
    assert.equal(first.handle, 2);
    assert.equal(backend.active, 1);
    backend.release();
    const second = await c.simpleReply(512);
    assert.equal(second.handle, 1);
    assert.equal(second.data.length, 512);
  });

  test('at maxInFlightPerConnection the server stops reading that socket', async (t) => {
    const backend = new GatedBackend(mem());
    const { port } = await start(t, { exports: [rw('disk', backend)], maxInFlightPerConnection: 2 });
    const c = await goodClient(t, port);
    const other = await goodClient(t, port);
    backend.hold('write');
    await c.write(Buffer.concat(Array.from({ length: 6 }, (_, i) => RawClient.request(P.NBD_CMD_WRITE, i, i * 512, 512, 0, pattern(512, i)))));
    await backend.started(2);
    await turns();
    // All six requests are in the server's buffer, but only two were started.
    assert.equal(backend.calls.length, 2);
    // Another connection is not held back by this one (its read is not gated).
    const r = await other.readAt(100, 64 * 1024, 512);
    assert.equal(r.error, 0);
    assert.equal(backend.calls.length, 3);
    backend.release();
    const handles = new Set<number>();
    for (let i = 0; i < 6; i++) {
      const reply = await c.simpleReply();
      assert.equal(reply.error, 0);
      handles.add(reply.handle);
    }
    assert.equal(handles.size, 6);
    // Never more than two of c's writes at once.
    assert.equal(backend.maxActiveOf.get('write'), 2);
  });

  test('NBD_CMD_DISC: in-flight requests are answered, then the server closes', async (t) => {
    const backend = new GatedBackend(mem());
    const { port } = await start(t, { exports: [rw('disk', backend)] });
    const c = await goodClient(t, port);
    backend.hold('write');
    await c.write(
      Buffer.concat([RawClient.request(P.NBD_CMD_WRITE, 7, 0, 512, 0, pattern(512, 7)), RawClient.request(P.NBD_CMD_DISC, 8, 0, 0)]),
    );
    await backend.started(1);
    await turns();
    assert.equal(c.isClosed, false);
    backend.release();
    const rest = await c.waitClosed();
    assert.equal(rest.length, 16);
    assert.equal(rest.readUInt32BE(4), 0);
    assert.equal(Number(rest.readBigUInt64BE(8)), 7);
    assert.deepEqual(await backend.inner.read(0, 512), pattern(512, 7));
  });
});

describe('NbdServer structured replies', () => {
  test('reads answer with one OFFSET_DATA chunk, errors with an ERROR chunk carrying a message', async (t) => {
    const dev = mem();
    await dev.write(4096, pattern(1024, 4));
    const { port } = await start(t, { exports: [rw('disk', dev)] });
    const c = await client(t, port);
    await c.go('disk', { structured: true });
    await c.sendRequest(P.NBD_CMD_READ, 1, 4096, 1024, P.NBD_CMD_FLAG_DF);
    const ok = await c.structuredChunk();
    assert.equal(ok.handle, 1);
    assert.equal(ok.flags, P.NBD_REPLY_FLAG_DONE);
    assert.equal(ok.type, P.NBD_REPLY_TYPE_OFFSET_DATA);
    assert.equal(Number(ok.payload.readBigUInt64BE(0)), 4096);
    assert.deepEqual(ok.payload.subarray(8), pattern(1024, 4));
    await c.sendRequest(P.NBD_CMD_READ, 2, MiB, 512);
    const bad = await c.structuredChunk();
    assert.equal(bad.type, P.NBD_REPLY_TYPE_ERROR);
    assert.equal(bad.flags, P.NBD_REPLY_FLAG_DONE);
    assert.equal(bad.payload.readUInt32BE(0), P.NBD_EINVAL);
    const msgLen = bad.payload.readUInt16BE(4);
    assert.equal(bad.payload.length, 6 + msgLen);
    assert.match(bad.payload.subarray(6).toString(), /beyond the end/);
    await c.sendRequest(P.NBD_CMD_READ, 3, 0, 0);
    const empty = await c.structuredChunk();
    assert.deepEqual([empty.type, empty.flags, empty.payload.length], [P.NBD_REPLY_TYPE_NONE, P.NBD_REPLY_FLAG_DONE, 0]);
    // Other commands succeed with simple replies, fail with error chunks.
    assert.equal(await c.writeAt(4, 0, Buffer.alloc(512, 1)), 0);
    await c.sendRequest(P.NBD_CMD_WRITE, 5, 100, 512, 0, Buffer.alloc(512));
    const werr = await c.structuredChunk();
    assert.deepEqual([werr.handle, werr.type, werr.payload.readUInt32BE(0)], [5, P.NBD_REPLY_TYPE_ERROR, P.NBD_EINVAL]);
  });
});

describe('NbdServer timeouts and shutdown', () => {
  test('a silent client is closed by the handshake timeout; others are unaffected (fake clock)', async (t) => {
    const fake = createClock();
    const { port, server } = await start(t, { exports: [rw('disk', mem())], clock: clockFrom(fake), handshakeTimeout: 10_000 });
    const silent = await client(t, port);
    await silent.greeting(); // connected and greeted, then says nothing
    const halfway = await client(t, port);
    await halfway.handshake(); // sends its flags, then stalls
    const good = await goodClient(t, port);
    await assertWorks(good, 1);
    const errors: string[] = [];
    server.on('error', (e) => errors.push(e.code));
    fake.tick(9_999);
    await turns();
    assert.equal(silent.isClosed, false);
    fake.tick(1);
    await silent.waitClosed();
    await halfway.waitClosed();
    assert.deepEqual(errors, ['BM_ERR_HANDSHAKE_TIMEOUT', 'BM_ERR_HANDSHAKE_TIMEOUT']);
    // The client in transmission has no handshake timer any more.
    fake.tick(60_000);
    await assertWorks(good, 3);
    assert.equal(server.stats().protocolErrors, 2);
  });

  test('garbage during the handshake and an oversized option length close the connection', async (t) => {
    const { port, server } = await start(t, { exports: [rw('disk', mem())] });
    const good = await goodClient(t, port);
    const garbage = await client(t, port);
    await garbage.handshake();
    let err = nextError(server);
    await garbage.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await garbage.waitClosed();
    assert.equal((await err)[0].code, 'BM_ERR_BAD_MAGIC');
    const big = await client(t, port);
    await big.handshake();
    err = nextError(server);
    await big.sendOption(P.NBD_OPT_GO, Buffer.alloc(0), 0x7fffffff); // announces 2 GiB, sends none
    await big.waitClosed();
    assert.equal((await err)[0].code, 'BM_ERR_FRAME_TOO_LARGE');
    await assertWorks(good, 1);
  });

  test('close() closes handshaking clients at once, lets in-flight requests finish, then resolves', async (t) => {
    const backend = new GatedBackend(mem());
    const server = new NbdServer({ exports: [rw('disk', backend)] });
    const disconnects: number[] = [];
    server.on('disconnect', (c) => disconnects.push(c.id));
    const { port } = await server.listen({ port: 0 });
    t.after(() => server.close());
    const busy = await client(t, port);
    await busy.go('disk');
    const handshaking = await client(t, port);
    await handshaking.greeting();
    backend.hold('write');
    await busy.sendRequest(P.NBD_CMD_WRITE, 1, 0, 512, 0, pattern(512, 1));
    await backend.started(1);
    let resolved = false;
    const closing = server.close().then(() => {
      resolved = true;
    });
    await handshaking.waitClosed();
    await turns();
    assert.equal(resolved, false);
    assert.equal(busy.isClosed, false);
    backend.release();
    const rest = await busy.waitClosed();
    assert.equal(rest.length, 16); // the write's reply arrived before the close
    assert.equal(rest.readUInt32BE(4), 0);
    await closing;
    assert.equal(server.stats().connections, 0);
    assert.equal(disconnects.length, 2);
    await assert.rejects(server.listen({ port: 0 }), { code: 'BM_ERR_CLOSED' });
  });
});

describe('NbdServer half-close and forced shutdown', () => {
  test('a client that half-closes still gets the replies of its in-flight requests', async (t) => {
    const backend = new GatedBackend(mem());
    const { port } = await start(t, { exports: [rw('disk', backend)] });
    const c = await goodClient(t, port);
    backend.hold('write');
    await c.sendRequest(P.NBD_CMD_WRITE, 1, 0, 512, 0, pattern(512, 1));
    await backend.started(1);
    c.socket.end();
    await turns();
    assert.equal(c.isClosed, false);
    backend.release();
    const rest = await c.waitClosed();
    assert.equal(rest.length, 16);
    assert.equal(Number(rest.readBigUInt64BE(8)), 1);
  });

  test('close() destroys a connection whose request outlives shutdownTimeout, and resolves once the backend call settles', async (t) => {
    const fake = createClock();
    const backend = new GatedBackend(mem());
    const server = new NbdServer({ exports: [rw('disk', backend)], clock: clockFrom(fake), shutdownTimeout: 2_000 });
    const { port } = await server.listen({ port: 0 });
    t.after(() => {
      backend.release();
      return server.close();
    });
    const c = await client(t, port);
    await c.go('disk');
    backend.hold('read');
    await c.sendRequest(P.NBD_CMD_READ, 1, 0, 512);
    await backend.started(1);
    let resolved = false;
    const closing = server.close().then(() => {
      resolved = true;
    });
    await turns();
    assert.equal(c.isClosed, false);
    fake.tick(2_000);
    assert.equal((await c.waitClosed()).length, 0);
    await turns();
    assert.equal(resolved, false, 'close() waits for the backend call');
    backend.release();
    await closing;
  });
});

describe('NbdServer base:allocation', () => {
  const HOLE_ZERO = P.NBD_STATE_HOLE | P.NBD_STATE_ZERO;

  test('NBD_OPT_LIST_META_CONTEXT lists base:allocation for no query, "base:" and "base:allocation"; other namespaces list nothing', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    await c.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ACK);
    for (const queries of [[], ['base:'], ['base:allocation'], ['qemu:dirty-bitmap:x', 'base:allocation']]) {
      const r = await c.metaContext(P.NBD_OPT_LIST_META_CONTEXT, 'disk', queries);
      assert.equal(r.final, P.NBD_REP_ACK, `queries ${JSON.stringify(queries)}`);
      assert.deepEqual(r.contexts, [{ id: 0, name: 'base:allocation' }], `queries ${JSON.stringify(queries)}`);
    }
    for (const queries of [['qemu:dirty-bitmap:x'], ['base:other'], ['x-foo:']]) {
      const r = await c.metaContext(P.NBD_OPT_LIST_META_CONTEXT, 'disk', queries);
      assert.equal(r.final, P.NBD_REP_ACK);
      assert.deepEqual(r.contexts, [], `queries ${JSON.stringify(queries)}`);
    }
    assert.equal((await c.metaContext(P.NBD_OPT_LIST_META_CONTEXT, 'nope', [])).final, P.NBD_REP_ERR_UNKNOWN);
    assert.equal((await c.metaContext(P.NBD_OPT_LIST_META_CONTEXT, 'disk', ['no-colon'])).final, P.NBD_REP_ERR_INVALID);
    // a query length running past the data
    const bad = RawClient.metaContextData('disk', ['base:allocation']);
    bad.writeUInt32BE(1000, 4 + 4 + 4);
    await c.sendOption(P.NBD_OPT_LIST_META_CONTEXT, bad);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_INVALID);
    assert.equal((await c.infoOrGo(P.NBD_OPT_GO, 'disk')).final, P.NBD_REP_ACK);
    assert.equal(await c.writeAt(1, 0, pattern(4096, 1)), 0, 'the session works after the refused options');
  });

  test('NBD_OPT_SET_META_CONTEXT needs structured replies, selects base:allocation with a non-zero id, and nothing for "base:" alone', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem())] });
    const c = await client(t, port);
    await c.handshake();
    assert.equal((await c.metaContext(P.NBD_OPT_SET_META_CONTEXT, 'disk', ['base:allocation'])).final, P.NBD_REP_ERR_INVALID);
    await c.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ACK);
    const none = await c.metaContext(P.NBD_OPT_SET_META_CONTEXT, 'disk', ['base:']);
    assert.equal(none.final, P.NBD_REP_ACK);
    assert.deepEqual(none.contexts, []);
    const one = await c.metaContext(P.NBD_OPT_SET_META_CONTEXT, 'disk', ['base:allocation', 'qemu:allocation-depth']);
    assert.equal(one.final, P.NBD_REP_ACK);
    assert.equal(one.contexts.length, 1);
    assert.equal(one.contexts[0]!.name, 'base:allocation');
    assert.notEqual(one.contexts[0]!.id, 0);
  });

  test('NBD_CMD_BLOCK_STATUS reports never-written and trimmed 64 KiB pages of a memory backend as hole+zero, written ones as data; REQ_ONE gives one extent', async (t) => {
    const K64 = 65536;
    const backend = mem(16 * K64);
    await backend.write(2 * K64, pattern(4096, 1));
    await backend.write(3 * K64, pattern(4096, 2));
    await backend.write(8 * K64, pattern(K64, 3));
    await backend.trim(8 * K64, K64);
    const { port } = await start(t, { exports: [rw('disk', backend)] });
    const c = await client(t, port);
    const { context } = await c.go('disk', { allocation: true });
    const all = await c.blockStatus(1, 0, 16 * K64);
    assert.equal(all.error, 0);
    assert.equal(all.context, context);
    assert.deepEqual(all.extents, [
      [2 * K64, HOLE_ZERO],
      [2 * K64, 0],
      [12 * K64, HOLE_ZERO],
    ]);
    // a sub-range starting inside the data
    assert.deepEqual((await c.blockStatus(2, 3 * K64, 2 * K64)).extents, [
      [K64, 0],
      [K64, HOLE_ZERO],
    ]);
    // REQ_ONE: exactly one extent, no longer than the request
    assert.deepEqual((await c.blockStatus(3, 0, K64, P.NBD_CMD_FLAG_REQ_ONE)).extents, [[K64, HOLE_ZERO]]);
    assert.deepEqual((await c.blockStatus(4, 0, 16 * K64, P.NBD_CMD_FLAG_REQ_ONE)).extents, [[2 * K64, HOLE_ZERO]]);
    assert.deepEqual((await c.blockStatus(5, 2 * K64, 512, P.NBD_CMD_FLAG_REQ_ONE)).extents, [[512, 0]]);
    // a write through NBD turns a hole into data
    assert.equal(await c.writeAt(6, 12 * K64, pattern(512, 4)), 0);
    assert.deepEqual((await c.blockStatus(7, 11 * K64, 3 * K64)).extents, [
      [K64, HOLE_ZERO],
      [K64, 0],
      [K64, HOLE_ZERO],
    ]);
  });

  test('NBD_CMD_BLOCK_STATUS errors: no context selected, context selected for another export, length 0, beyond the end, misaligned; the stream stays in sync', async (t) => {
    const { port } = await start(t, { exports: [rw('disk', mem()), rw('other', mem())] });
    const plain = await client(t, port);
    await plain.go('disk', { structured: true });
    assert.equal((await plain.blockStatus(1, 0, 4096)).error, P.NBD_EINVAL, 'no context selected');
    const crossed = await client(t, port);
    await crossed.handshake();
    await crossed.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
    await crossed.optionReply();
    assert.equal((await crossed.metaContext(P.NBD_OPT_SET_META_CONTEXT, 'other', ['base:allocation'])).contexts.length, 1);
    assert.equal((await crossed.infoOrGo(P.NBD_OPT_GO, 'disk')).final, P.NBD_REP_ACK);
    assert.equal((await crossed.blockStatus(1, 0, 4096)).error, P.NBD_EINVAL, 'context selected for another export');
    const c = await client(t, port);
    await c.go('disk', { allocation: true });
    assert.equal((await c.blockStatus(1, 0, 0)).error, P.NBD_EINVAL, 'length 0');
    assert.equal((await c.blockStatus(2, MiB - 512, 1024)).error, P.NBD_EINVAL, 'beyond the end');
    assert.equal((await c.blockStatus(3, 100, 512)).error, P.NBD_EINVAL, 'misaligned');
    assert.equal((await c.blockStatus(4, 0, 512, 0x80)).error, P.NBD_EINVAL, 'unknown flag');
    assert.equal((await c.blockStatus(5, 0, MiB)).error, 0, 'the stream is still in sync');
  });

  test('a backend without blockStatus answers one allocated extent of unknown content; a backend whose map does not fit the range gets EIO', async (t) => {
    const plainBackend = new GatedBackend(mem());
    const broken: NbdBackend = {
      size: MiB,
      blockSize: 512,
      read: (o, l) => Promise.resolve(Buffer.alloc(l)),
      write: () => Promise.resolve(),
      flush: () => Promise.resolve(),
      blockStatus: (offset, length) => Promise.resolve([{ offset, length: length - 512, zero: true, hole: true }]),
    };
    const { port } = await start(t, { exports: [rw('plain', plainBackend), rw('broken', broken)] });
    const c = await client(t, port);
    await c.go('plain', { allocation: true });
    assert.deepEqual((await c.blockStatus(1, 4096, 8192)).extents, [[8192, 0]]);
    const b = await client(t, port);
    await b.go('broken', { allocation: true });
    assert.equal((await b.blockStatus(1, 0, 4096)).error, P.NBD_EIO);
    assert.equal(await b.writeAt(2, 0, pattern(4096, 2)), 0, 'the connection keeps working');
  });
});

describe('NbdServer options and exports', () => {
  test('invalid options and exports are refused with BM_ERR_INVALID_ARGUMENT', () => {
    const ok = rw('disk', mem());
    const bad = (o: unknown): void =>
      assert.throws(() => new NbdServer(o as NbdServerOptions), { code: 'BM_ERR_INVALID_ARGUMENT' });
    bad(undefined);
    bad({ exports: 'x' });
    bad({ exports: [ok, ok] });
    bad({ exports: [ok], maxPayload: 1000 });
    bad({ exports: [ok], maxInFlightPerConnection: 0 });
    bad({ exports: [ok], handshakeTimeout: -1 });
    bad({ exports: [{ ...ok, name: 'a\0b' }] });
    bad({ exports: [{ ...ok, name: 'x'.repeat(4097) }] });
    bad({ exports: [{ ...ok, backend: { ...mem(), size: 1000, blockSize: 512 } }] });
    bad({ exports: [{ ...ok, readOnly: 'no' }] });
    assert.doesNotThrow(() => validateNbdExport(ok));
  });

  test('nbdErrorFor maps coded and system errors', () => {
    const e = (code: ConstructorParameters<typeof BlockMirrorError>[0]): BlockMirrorError => new BlockMirrorError(code, 'x');
    assert.equal(nbdErrorFor(e('BM_ERR_NO_SPACE')), P.NBD_ENOSPC);
    assert.equal(nbdErrorFor(e('BM_ERR_READ_ONLY')), P.NBD_EPERM);
    assert.equal(nbdErrorFor(e('BM_ERR_OUT_OF_RANGE')), P.NBD_EINVAL);
    assert.equal(nbdErrorFor(e('BM_ERR_MISALIGNED')), P.NBD_EINVAL);
    assert.equal(nbdErrorFor(e('BM_ERR_INVALID_ARGUMENT')), P.NBD_EINVAL);
    assert.equal(nbdErrorFor(e('BM_ERR_IO')), P.NBD_EIO);
    assert.equal(nbdErrorFor(e('BM_ERR_CLOSED')), P.NBD_EIO);
    assert.equal(nbdErrorFor(Object.assign(new Error('x'), { code: 'EFBIG' })), P.NBD_ENOSPC);
    assert.equal(nbdErrorFor(new Error('x')), P.NBD_EIO);
    assert.equal(nbdErrorFor(undefined), P.NBD_EIO);
  });
});

describe('NbdServer READ buffers', () => {
  /** A backend that reads into the server's buffers and records each buffer it was given. */
  function intoBackend(dev: MemoryBlockDevice): NbdBackend & { targets: Buffer[] } {
    const targets: Buffer[] = [];
    return {
      targets,
      size: dev.size,
      blockSize: dev.blockSize,
      read: (offset, length) => dev.read(offset, length),
      async readInto(offset, target) {
        targets.push(target as Buffer);
        target.set(await dev.read(offset, target.length));
      },
      write: (offset, data) => dev.write(offset, data),
      flush: () => dev.flush(),
    };
  }

  test('issue 13: READ replies come from a pool of buffers: 64 concurrent reads of 256 KiB whose replies wait in the socket of a client that reads nothing each carry their own data; a second round reads into the first round\'s buffers', async (t) => {
    const piece = 256 * 1024;
    const count = 64;
    const dev = mem(count * piece, 4096);
    for (let i = 0; i < count; i++) await dev.write(i * piece, pattern(piece, i + 1));
    const backend = intoBackend(dev);
    // every read may run at once: only the pool stands between a buffer and its next read
    const { port } = await start(t, { exports: [rw('disk', backend)], maxInFlightBytesPerConnection: 2 * count * piece, maxInFlightBytes: 2 * count * piece });
    const c = await goodClient(t, port);
    const round = async (first: number): Promise<void> => {
      c.socket.pause();
      for (let i = 0; i < count; i++) await c.sendRequest(P.NBD_CMD_READ, first + i, i * piece, piece);
      // the reads run while the client takes no byte: their replies wait in the server's socket
      while (backend.targets.length < first - 1 + count) await turns(1);
      await turns();
      c.socket.resume();
      const seen = new Set<number>();
      for (let i = 0; i < count; i++) {
        const r = await c.simpleReply(piece);
        assert.equal(r.error, 0);
        const index = r.handle - first;
        assert.ok(index >= 0 && index < count && !seen.has(index), `handle ${r.handle}`);
        seen.add(index);
        assert.ok(r.data.equals(pattern(piece, index + 1)), `reply ${r.handle} carries the data of its own offset`);
      }
    };
    await round(1);
    // (a reply the socket took at once may already have lent its buffer to a later read of the round)
    const firstRound = new Set(backend.targets);
    await round(1 + count);
    const secondRound = new Set(backend.targets.slice(count));
    assert.deepEqual([...firstRound].filter((b) => !secondRound.has(b)), [], 'every buffer of the first round is read into again in the second');
  });
});
