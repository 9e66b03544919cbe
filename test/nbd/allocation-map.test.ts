/**
 * A file volume exported with its allocation map, against real NBD tools:
 * nbdinfo --map and qemu-img map show the holes as `nbdkit file` does for the
 * same sparse image; nbdcopy into the export records the source's holes as
 * zero ranges (the map) and keeps the backing file sparse. Missing tools skip
 * the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { AllocationTrackingDevice } from '../../src/device/allocation-tracking-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { startNbdkit } from '../helpers/nbd-servers.js';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

async function tmpDir(t: TestContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blockmirror-alloc-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A file volume behind its allocation map, exported as `disk`. */
async function exported(t: TestContext, dir: string, size: number, initial: 'zero' | 'data'): Promise<{ device: AllocationTrackingDevice; uri: string; image: string }> {
  const image = path.join(dir, 'disk.img');
  const file = await FileBlockDevice.open(image, { size });
  const device = await AllocationTrackingDevice.open(file, path.join(dir, 'disk.allocation'), { initial });
  const server = new NbdServer({ exports: [{ name: 'disk', readOnly: false, backend: device }] });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(async () => {
    await server.close();
    await device.close();
  });
  return { device, uri: `nbd://127.0.0.1:${port}/disk`, image };
}

async function nbdinfoMap(t: TestContext, uri: string): Promise<Array<[number, number, string]>> {
  const map = await runTool(t, 'nbdinfo', ['--map', '--json', uri]);
  ok(map, `nbdinfo --map ${uri}`);
  return (JSON.parse(map.stdout) as Array<{ offset: number; length: number; description: string }>).map((e) => [e.offset, e.length, e.description]);
}

describe('allocation map over NBD with real tools', () => {
  test('nbdinfo --map and qemu-img map of a sparse file volume show its holes, as nbdkit file does for the same image; nbdinfo sees fast zero', async (t) => {
    if (!requireTool(['nbdinfo', 'qemu-img', 'nbdkit'], t)) return;
    const dir = await tmpDir(t);
    const size = 8 * MiB;
    const { device, uri, image } = await exported(t, dir, size, 'zero');
    await device.write(MiB, randomBytes(64 * KiB));
    await device.write(5 * MiB, randomBytes(128 * KiB));
    await device.flush();
    const expected: Array<[number, number, string]> = [
      [0, MiB, 'hole,zero'],
      [MiB, 64 * KiB, 'data'],
      [MiB + 64 * KiB, 4 * MiB - 64 * KiB, 'hole,zero'],
      [5 * MiB, 128 * KiB, 'data'],
      [5 * MiB + 128 * KiB, 3 * MiB - 128 * KiB, 'hole,zero'],
    ];
    assert.deepEqual(await nbdinfoMap(t, uri), expected);
    const qmap = await runTool(t, 'qemu-img', ['map', '-f', 'raw', '--output=json', uri]);
    ok(qmap, 'qemu-img map');
    const qextents = JSON.parse(qmap.stdout) as Array<{ start: number; length: number; zero: boolean; data: boolean }>;
    assert.deepEqual(
      qextents.map((e) => [e.start, e.length, e.data, e.zero]),
      expected.map(([o, l, d]) => [o, l, d === 'data', d !== 'data']),
    );
    const info = await runTool(t, 'nbdinfo', ['--json', uri]);
    ok(info, 'nbdinfo');
    assert.equal((JSON.parse(info.stdout) as { exports: Array<{ can_fast_zero: boolean }> }).exports[0]!.can_fast_zero, true, 'NBD_FLAG_SEND_FAST_ZERO seen by the client');
    // the same image served by nbdkit file (holes from the file system)
    const nbdkit = await startNbdkit('file', [`file=${image}`], ['--readonly']);
    t.after(() => nbdkit.stop());
    assert.deepEqual(await nbdinfoMap(t, nbdkit.uri), expected, 'the same map as nbdkit file');
  });

  test('nbdcopy of a sparse image into an export holding data: the holes become zero ranges of the map (TRIM / WRITE_ZEROES), the data is copied, reads match', async (t) => {
    if (!requireTool(['nbdinfo', 'nbdcopy', 'nbdkit'], t)) return;
    const dir = await tmpDir(t);
    const size = 8 * MiB;
    // the source: a sparse file with two data pieces, served by nbdkit file
    const source = path.join(dir, 'source.img');
    const h = await fs.open(source, 'w');
    await h.truncate(size);
    const a = randomBytes(256 * KiB);
    const b = randomBytes(64 * KiB);
    await h.write(a, 0, a.length, 2 * MiB);
    await h.write(b, 0, b.length, 7 * MiB);
    await h.close();
    const nbdkit = await startNbdkit('file', [`file=${source}`], ['--readonly']);
    t.after(() => nbdkit.stop());
    // the destination holds data everywhere (an existing image: its map says "may hold data")
    const { device, uri } = await exported(t, dir, size, 'data');
    await device.inner.write(0, Buffer.alloc(size, 0xaa));
    await device.inner.flush();
    assert.equal(device.map.zeroRegions, 0);
    // --flush: zero ranges are recorded in the map once a flush made them durable
    ok(await runTool(t, 'nbdcopy', ['--flush', nbdkit.uri, uri]), 'nbdcopy in');
    const want = Buffer.alloc(size);
    a.copy(want, 2 * MiB);
    b.copy(want, 7 * MiB);
    assert.deepEqual(await device.read(0, size), want);
    assert.deepEqual(await nbdinfoMap(t, uri), [
      [0, 2 * MiB, 'hole,zero'],
      [2 * MiB, 256 * KiB, 'data'],
      [2 * MiB + 256 * KiB, 5 * MiB - 256 * KiB, 'hole,zero'],
      [7 * MiB, 64 * KiB, 'data'],
      [7 * MiB + 64 * KiB, MiB - 64 * KiB, 'hole,zero'],
    ]);
  });

  test('issue 13 (3): nbdcopy and qemu-img convert of a sparse image into a new export keep its backing file sparse: holes arrive as TRIM / WRITE_ZEROES of known-zero regions and write nothing', async (t) => {
    if (!requireTool(['nbdcopy', 'qemu-img', 'nbdkit'], t)) return;
    const dir = await tmpDir(t);
    const size = 64 * MiB;
    const source = path.join(dir, 'source.img');
    const h = await fs.open(source, 'w');
    await h.truncate(size);
    const a = randomBytes(512 * KiB);
    const b = randomBytes(256 * KiB);
    await h.write(a, 0, a.length, 8 * MiB);
    await h.write(b, 0, b.length, 50 * MiB);
    await h.close();
    const want = Buffer.alloc(size);
    a.copy(want, 8 * MiB);
    b.copy(want, 50 * MiB);
    const nbdkit = await startNbdkit('file', [`file=${source}`], ['--readonly']);
    t.after(() => nbdkit.stop());
    const copies: Array<[string, (uri: string) => Promise<ToolResult>]> = [
      ['nbdcopy', (uri) => runTool(t, 'nbdcopy', ['--flush', nbdkit.uri, uri])],
      // -n: into the existing export; qemu-img zeroes what it does not copy (WRITE_ZEROES)
      ['qemu-img convert', (uri) => runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, uri])],
    ];
    for (const [tool, copy] of copies) {
      const sub = path.join(dir, tool.replace(/\W/g, '-'));
      await fs.mkdir(sub);
      // a new sparse volume: its map starts all zero
      const { device, uri, image } = await exported(t, sub, size, 'zero');
      ok(await copy(uri), `${tool} in`);
      await device.flush();
      assert.deepEqual(await device.read(0, size), want, `${tool}: the data arrived`);
      const allocated = (await fs.stat(image)).blocks * 512;
      assert.ok(allocated <= a.length + b.length + 2 * MiB, `${tool}: ${(a.length + b.length) / KiB} KiB of data allocate ${allocated / KiB} KiB of the backing file`);
    }
  });

  test('nbdcopy out of a sparse export keeps the copy sparse and is answered from the map (the holes are not read)', async (t) => {
    if (!requireTool(['nbdcopy'], t)) return;
    const dir = await tmpDir(t);
    const size = 64 * MiB;
    const { device, uri } = await exported(t, dir, size, 'zero');
    const data = randomBytes(MiB);
    await device.write(32 * MiB, data);
    await device.flush();
    const out = path.join(dir, 'copy.img');
    ok(await runTool(t, 'nbdcopy', [uri, out]), 'nbdcopy out');
    const copy = await fs.readFile(out);
    assert.equal(copy.length, size);
    assert.deepEqual(copy.subarray(32 * MiB, 33 * MiB), data);
    const allocated = (await fs.stat(out)).blocks * 512;
    assert.ok(allocated <= 2 * MiB, `the copy of 1 MiB of data allocates ${allocated} bytes`);
  });
});
