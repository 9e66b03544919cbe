/**
 * Real NBD clients (qemu-img, nbdcopy, nbdinfo, fio) against exports of a
 * primary whose volumes are mirrored to a target on loopback, with file
 * devices on both sides. Missing tools skip the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { primaryVolumeBackend } from '../../src/nbd/volume-backend.js';
import type { ReplicationMode } from '../../src/replication/primary-volume.js';
import { startPair, type Pair } from '../helpers/pair.js';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';

const MiB = 1024 * 1024;

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

interface Mirrored {
  pair: Pair;
  dir: string;
  files: Map<string, { primary: string; mirror: string }>;
  uri(name: string): string;
  server: NbdServer;
}

/** A primary and a target with file volumes in a temp dir, and an NBD server exporting the primary's volumes. */
async function mirrored(t: TestContext, volumes: Array<{ name: string; mode: ReplicationMode; size: number }>): Promise<Mirrored> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blockmirror-interop-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const files = new Map<string, { primary: string; mirror: string }>();
  const devices: FileBlockDevice[] = [];
  const specs = [];
  for (const v of volumes) {
    const f = { primary: path.join(dir, `${v.name}-primary.img`), mirror: path.join(dir, `${v.name}-mirror.img`) };
    files.set(v.name, f);
    const primaryDevice = await FileBlockDevice.open(f.primary, { size: v.size });
    const targetDevice = await FileBlockDevice.open(f.mirror, { size: v.size });
    devices.push(primaryDevice, targetDevice);
    // two new sparse files: identical images, no initial sync (as --assume-clean)
    specs.push({ name: v.name, mode: v.mode, primaryDevice, targetDevice, initialSync: 'none' as const });
  }
  t.after(() => Promise.all(devices.map((d) => d.close())));
  const pair = await startPair(specs);
  t.after(() => pair.close());
  const server = new NbdServer({
    exports: pair.primary.volumes.map((v) => ({ name: v.name, readOnly: false, backend: primaryVolumeBackend(v) })),
  });
  const errors: string[] = [];
  server.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  t.after(() => assert.deepEqual(errors, [], 'no client broke the protocol'));
  return { pair, dir, files, server, uri: (name) => `nbd://127.0.0.1:${port}/${name}` };
}

describe('mirrored exports with real NBD clients', () => {
  test('nbdinfo lists the mirrored exports with their sizes', async (t) => {
    if (!requireTool('nbdinfo', t)) return;
    const m = await mirrored(t, [{ name: 'sync0', mode: 'sync', size: 8 * MiB }, { name: 'async0', mode: 'async', size: 4 * MiB }]);
    const r = await runTool(t, 'nbdinfo', ['--json', '--list', m.uri('')]);
    ok(r, 'nbdinfo --list');
    const parsed = JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number; is_read_only: boolean }> };
    assert.deepEqual(
      Object.fromEntries(parsed.exports.map((e) => [e['export-name'], [e['export-size'], e.is_read_only]])),
      { sync0: [8 * MiB, false], async0: [4 * MiB, false] },
    );
  });

  test('qemu-img convert -n and nbdcopy into sync-mirrored exports: the MIRROR files equal the source once the tools exit', async (t) => {
    if (!requireTool(['qemu-img', 'nbdcopy'], t)) return;
    const m = await mirrored(t, [{ name: 'a', mode: 'sync', size: 8 * MiB }, { name: 'b', mode: 'sync', size: 8 * MiB }]);
    const image = randomBytes(8 * MiB);
    const src = path.join(m.dir, 'src.img');
    await fs.writeFile(src, image);
    ok(await runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, m.uri('a')]), 'qemu-img convert');
    ok(await runTool(t, 'nbdcopy', ['--flush', src, m.uri('b')]), 'nbdcopy');
    // No drain: in sync mode every reply came after the mirror had the data.
    const want = sha256(image);
    for (const name of ['a', 'b']) {
      const f = m.files.get(name)!;
      assert.equal(sha256(await fs.readFile(f.mirror)), want, `${name}: mirror file`);
      assert.equal(sha256(await fs.readFile(f.primary)), want, `${name}: primary file`);
    }
    for (const v of m.pair.primary.volumes) assert.equal(v.status().inSync, true);
    assert.equal(m.server.stats().errors, 0);
  });

  test('fio --ioengine=nbd with verify=crc32c on an async-mirrored export passes; after drain mirror == primary', async (t) => {
    if (!requireTool('fio', t)) return;
    const m = await mirrored(t, [{ name: 'async0', mode: 'async', size: 16 * MiB }]);
    const r = await runTool(
      t,
      'fio',
      [
        '--name=mirror',
        '--ioengine=nbd',
        `--uri=${m.uri('async0')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=16M',
        '--verify=crc32c',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      { cwd: m.dir },
    );
    ok(r, 'fio');
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> }).jobs[0]!;
    assert.equal(job.error, 0);
    assert.equal(job.write.io_bytes, 16 * MiB);
    assert.equal(job.read.io_bytes, 16 * MiB, 'the verify pass read everything back');
    await m.pair.primary.drain(60_000);
    const f = m.files.get('async0')!;
    const [a, b] = await Promise.all([fs.readFile(f.primary), fs.readFile(f.mirror)]);
    assert.ok(a.equals(b), 'mirror == primary after drain');
    assert.equal(m.pair.primary.volume('async0').status().replicatedBytes, 16 * MiB);
  });

  // Issue 11, scenario 12: the export accepts 32 MiB requests, the link carries 8 MiB per frame.
  for (const mode of ['sync', 'async'] as const) {
    test(`SPEC 10: qemu-io 16 MiB and 32 MiB writes on a ${mode}-mirrored export succeed, a later write on a new connection still reaches the mirror, mirror == primary`, async (t) => {
      if (!requireTool('qemu-io', t)) return;
      const m = await mirrored(t, [{ name: 'big', mode, size: 64 * MiB }]);
      const big = await runTool(t, 'qemu-io', ['-f', 'raw', m.uri('big'), '-c', 'write -P 0x5a 0 16M', '-c', 'write -P 0xa5 16M 32M'], { timeout: 60_000 });
      ok(big, 'qemu-io 16M + 32M writes');
      assert.doesNotMatch(big.stdout + big.stderr, /error|failed/i);
      // a later, small write on another connection: must not hang behind a lost seq
      const small = await runTool(t, 'qemu-io', ['-f', 'raw', m.uri('big'), '-c', 'write -P 0x77 60M 4k', '-c', 'read -P 0x5a 0 16M'], { timeout: 60_000 });
      ok(small, 'qemu-io small write');
      assert.doesNotMatch(small.stdout + small.stderr, /error|failed/i);
      const v = m.pair.primary.volume('big');
      if (mode === 'async') await m.pair.primary.drain(60_000);
      // sync: every reply came after the mirror had the data, no drain
      const f = m.files.get('big')!;
      const [a, b] = await Promise.all([fs.readFile(f.primary), fs.readFile(f.mirror)]);
      assert.ok(b.subarray(0, 16 * MiB).every((x) => x === 0x5a), 'mirror: the 16 MiB write');
      assert.ok(b.subarray(16 * MiB, 48 * MiB).every((x) => x === 0xa5), 'mirror: the 32 MiB write');
      assert.ok(b.subarray(60 * MiB, 60 * MiB + 4096).every((x) => x === 0x77), 'mirror: the later small write');
      assert.ok(a.equals(b), 'mirror file == primary file');
      const s = v.status();
      assert.equal(s.inSync, true);
      assert.equal(s.mirrorErrors, 0);
      assert.equal(s.replicatedBytes, 48 * MiB + 4096);
      assert.equal(s.lastSeq, 2 + 4 + 1, '16 MiB = 2 parts, 32 MiB = 4 parts, then the small write');
      assert.equal(m.server.stats().errors, 0);
    });
  }
});
