/**
 * NbdServer against real NBD clients: nbdinfo, nbdcopy (libnbd), qemu-io,
 * qemu-img (qemu's NBD client) and fio's nbd engine. Each test needs its
 * tools on PATH: missing tools skip the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { NbdExport } from '../../src/nbd/export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { requireTool, runTool } from '../helpers/tools.js';
import type { ToolResult } from '../helpers/tools.js';
import { GatedBackend } from './raw-client.js';

const MiB = 1024 * 1024;

async function serve(t: TestContext, exports: NbdExport[]): Promise<{ server: NbdServer; uri: (name: string) => string }> {
  const server = new NbdServer({ exports });
  const errors: string[] = [];
  server.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  t.after(() => assert.deepEqual(errors, [], 'no client broke the protocol'));
  return { server, uri: (name) => `nbd://127.0.0.1:${port}/${name}` };
}

async function tmpDir(t: TestContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blockmirror-nbd-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

interface NbdinfoExport {
  'export-name': string;
  'export-size': number;
  description?: string;
  is_read_only: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_multi_conn: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
}

describe('NbdServer with real NBD clients', () => {
  test('nbdinfo --list shows every export with its size; nbdinfo on one export shows size and flags', async (t) => {
    if (!requireTool('nbdinfo', t)) return;
    const { uri } = await serve(t, [
      { name: 'disk', description: 'main disk', readOnly: false, backend: new MemoryBlockDevice(16 * MiB) },
      { name: 'ro', readOnly: true, backend: new MemoryBlockDevice(MiB, { blockSize: 4096 }) },
      { name: 'other', readOnly: false, backend: new MemoryBlockDevice(3 * MiB) },
    ]);
    const list = await runTool(t, 'nbdinfo', ['--json', '--list', uri('')]);
    ok(list, 'nbdinfo --list');
    const parsed = JSON.parse(list.stdout) as { protocol: string; exports: NbdinfoExport[] };
    assert.equal(parsed.protocol, 'newstyle-fixed');
    const sizes = Object.fromEntries(parsed.exports.map((e) => [e['export-name'], e['export-size']]));
    assert.deepEqual(sizes, { disk: 16 * MiB, ro: MiB, other: 3 * MiB });
    assert.equal(parsed.exports.find((e) => e['export-name'] === 'disk')?.description, 'main disk');

    const one = await runTool(t, 'nbdinfo', ['--json', uri('disk')]);
    ok(one, 'nbdinfo disk');
    const disk = (JSON.parse(one.stdout) as { exports: NbdinfoExport[] }).exports[0]!;
    assert.equal(disk['export-size'], 16 * MiB);
    assert.equal(disk.is_read_only, false);
    assert.equal(disk.can_flush, true);
    assert.equal(disk.can_fua, true);
    assert.equal(disk.can_trim, true);
    assert.equal(disk.can_zero, true);
    assert.equal(disk.can_multi_conn, true);
    assert.deepEqual([disk.block_size_minimum, disk.block_size_preferred, disk.block_size_maximum], [512, 4096, 32 * MiB]);

    const ro = await runTool(t, 'nbdinfo', ['--json', uri('ro')]);
    ok(ro, 'nbdinfo ro');
    const roInfo = (JSON.parse(ro.stdout) as { exports: NbdinfoExport[] }).exports[0]!;
    assert.equal(roInfo.is_read_only, true);
    assert.equal(roInfo.can_trim, false);
    assert.equal(roInfo.can_zero, false);
    assert.equal(roInfo.block_size_minimum, 4096);

    const missing = await runTool(t, 'nbdinfo', [uri('nope')]);
    assert.notEqual(missing.code, 0);
  });

  test('qemu-io: write, read-verify, FUA write, flush, discard and write-zeroes reach the backend', async (t) => {
    if (!requireTool('qemu-io', t)) return;
    const dev = new MemoryBlockDevice(16 * MiB);
    await dev.write(192 * 1024, Buffer.alloc(64 * 1024, 0x55)); // to be zeroed
    const backend = new GatedBackend(dev);
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const r = await runTool(t, 'qemu-io', [
      '-f', 'raw', uri('disk'),
      '-c', 'write -P 0xab 0 64k',
      '-c', 'read -P 0xab 0 64k',
      '-c', 'write -f -P 0xcd 64k 64k',
      '-c', 'flush',
      '-c', 'discard 128k 64k',
      '-c', 'write -z 192k 64k',
      '-c', 'read -P 0 192k 64k',
    ]);
    ok(r, 'qemu-io');
    assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i);
    assert.ok((await dev.read(0, 64 * 1024)).every((b) => b === 0xab));
    assert.ok((await dev.read(64 * 1024, 64 * 1024)).every((b) => b === 0xcd));
    assert.ok((await dev.read(192 * 1024, 64 * 1024)).every((b) => b === 0));
    assert.ok(backend.calls.some((c) => c.op === 'write' && c.fua && c.offset === 64 * 1024), 'FUA write');
    assert.ok(backend.count('flush') >= 1, 'flush');
    assert.ok(backend.calls.some((c) => c.op === 'trim' && c.offset === 128 * 1024), 'trim');
  });

  test('qemu-io on a read-only export: the write fails with a permission error, the backend is unchanged', async (t) => {
    if (!requireTool('qemu-io', t)) return;
    const dev = new MemoryBlockDevice(MiB);
    await dev.write(0, Buffer.alloc(4096, 0x11));
    const backend = new GatedBackend(dev);
    const { uri } = await serve(t, [{ name: 'ro', readOnly: true, backend }]);
    const w = await runTool(t, 'qemu-io', ['-f', 'raw', uri('ro'), '-c', 'write -P 0xab 0 4k']);
    assert.notEqual(w.code, 0);
    assert.match(w.stdout + w.stderr, /permission denied|read-only|read only/i);
    // Opened read-only, reads work.
    const rd = await runTool(t, 'qemu-io', ['-r', '-f', 'raw', uri('ro'), '-c', 'read -P 0x11 0 4k']);
    ok(rd, 'qemu-io -r read');
    assert.ok((await dev.read(0, 4096)).every((b) => b === 0x11));
    assert.equal(backend.count('write'), 0);
  });

  test('qemu-img convert and nbdcopy copy a random 8 MiB image byte for byte (file backend)', async (t) => {
    if (!requireTool(['qemu-img', 'nbdcopy'], t)) return;
    const dir = await tmpDir(t);
    const src = path.join(dir, 'src.img');
    const image = randomBytes(8 * MiB);
    await fs.writeFile(src, image);
    const a = await FileBlockDevice.open(path.join(dir, 'a.img'), { size: 8 * MiB });
    const b = await FileBlockDevice.open(path.join(dir, 'b.img'), { size: 8 * MiB });
    t.after(() => Promise.all([a.close(), b.close()]));
    const { server, uri } = await serve(t, [
      { name: 'a', readOnly: false, backend: a },
      { name: 'b', readOnly: false, backend: b },
    ]);
    ok(await runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri('a')]), 'qemu-img convert');
    ok(await runTool(t, 'nbdcopy', ['--flush', src, uri('b')]), 'nbdcopy');
    // And back out through the server: nbdcopy nbd → file.
    const back = path.join(dir, 'back.img');
    ok(await runTool(t, 'nbdcopy', [uri('a'), back]), 'nbdcopy out');
    await server.close();
    await Promise.all([a.close(), b.close()]);
    const want = sha256(image);
    assert.equal(sha256(await fs.readFile(path.join(dir, 'a.img'))), want);
    assert.equal(sha256(await fs.readFile(path.join(dir, 'b.img'))), want);
    assert.equal(sha256(await fs.readFile(back)), want);
    assert.equal(server.stats().errors, 0);
  });

  test('fio nbd engine: 16 MiB random 4k writes at iodepth 16 verify with crc32c', async (t) => {
    if (!requireTool('fio', t)) return;
    const dir = await tmpDir(t);
    const { server, uri } = await serve(t, [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(16 * MiB) }]);
    const r = await runTool(
      t,
      'fio',
      [
        '--name=nbd',
        '--ioengine=nbd',
        `--uri=${uri('disk')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=16M',
        '--verify=crc32c',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      { cwd: dir },
    );
    ok(r, 'fio');
    // The nbd engine prints "fio: connected to NBD server" before the JSON document.
    const json = r.stdout.slice(r.stdout.indexOf('{'));
    const job = (JSON.parse(json) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] }).jobs[0]!;
    assert.equal(job.error, 0);
    assert.equal(job.write.io_bytes, 16 * MiB);
    assert.equal(job.read.io_bytes, 16 * MiB); // the verify pass
    const stats = server.stats();
    assert.equal(stats.errors, 0);
    assert.ok(stats.bytesWritten >= 16 * MiB);
  });
  test('base:allocation: nbdinfo lists the context; nbdinfo --map and qemu-img map show the holes and data of a memory export; nbdcopy out keeps the copy sparse', async (t) => {
    if (!requireTool(['nbdinfo', 'qemu-img', 'nbdcopy'], t)) return;
    const dir = await tmpDir(t);
    const backend = new MemoryBlockDevice(4 * MiB);
    await backend.write(MiB, Buffer.alloc(64 * 1024, 1));
    await backend.write(3 * MiB, Buffer.alloc(128 * 1024, 2));
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend }]);
    const info = await runTool(t, 'nbdinfo', ['--json', uri('disk')]);
    ok(info, 'nbdinfo');
    assert.deepEqual((JSON.parse(info.stdout) as { exports: Array<{ contexts: string[] }> }).exports[0]!.contexts, ['base:allocation']);
    // [start, length, data?]
    const expected: Array<[number, number, boolean]> = [
      [0, MiB, false],
      [MiB, 64 * 1024, true],
      [MiB + 64 * 1024, 2 * MiB - 64 * 1024, false],
      [3 * MiB, 128 * 1024, true],
      [3 * MiB + 128 * 1024, MiB - 128 * 1024, false],
    ];
    const map = await runTool(t, 'nbdinfo', ['--map', '--json', uri('disk')]);
    ok(map, 'nbdinfo --map');
    const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number; description: string }>;
    assert.deepEqual(
      extents.map((e) => [e.offset, e.length, e.description]),
      expected.map(([o, l, data]) => [o, l, data ? 'data' : 'hole,zero']),
    );
    const qmap = await runTool(t, 'qemu-img', ['map', '-f', 'raw', '--output=json', uri('disk')]);
    ok(qmap, 'qemu-img map');
    const qextents = JSON.parse(qmap.stdout) as Array<{ start: number; length: number; zero: boolean; data: boolean }>;
    assert.deepEqual(
      qextents.map((e) => [e.start, e.length, e.data, e.zero]),
      expected.map(([o, l, data]) => [o, l, data, !data]),
    );
    const out = path.join(dir, 'copy.img');
    ok(await runTool(t, 'nbdcopy', [uri('disk'), out]), 'nbdcopy out');
    const copy = await fs.readFile(out);
    assert.deepEqual(copy, await backend.read(0, 4 * MiB));
    const allocated = (await fs.stat(out)).blocks * 512;
    assert.ok(allocated <= 1 * MiB, `the copy of 192 KiB of data allocates ${allocated} bytes (holes were skipped)`);
  });

  test('base:allocation on a backend that does not know its allocation (file): one data extent, never a false zero', async (t) => {
    if (!requireTool('nbdinfo', t)) return;
    const dir = await tmpDir(t);
    const file = await FileBlockDevice.open(path.join(dir, 'disk.img'), { size: 2 * MiB });
    t.after(() => file.close());
    const { uri } = await serve(t, [{ name: 'disk', readOnly: false, backend: file }]);
    const map = await runTool(t, 'nbdinfo', ['--map', '--json', uri('disk')]);
    ok(map, 'nbdinfo --map');
    const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; description: string }>;
    assert.deepEqual(extents.map((e) => [e.offset, e.length, e.description]), [[0, 2 * MiB, 'data']]);
  });
});
