/**
 * The CLI's NBD exports with real clients: a sync-mirrored primary export
 * written by qemu-img (mirror file identical afterwards) and the mirror's
 * read-only export refusing qemu-io writes. Missing tools skip the test, or
 * fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';
import { CliProcess, listeningAddresses, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

describe('CLI exports with real NBD clients', () => {
  test('blockmirror primary --mode sync --nbd: qemu-img convert -n of a random 8 MiB image; the MIRROR file is byte-identical', async (t) => {
    if (!requireTool('qemu-img', t)) return;
    const dir = await tmpDir(t);
    const mirrorFile = path.join(dir, 'mirror.img');
    const primaryFile = path.join(dir, 'primary.img');
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `disk=${mirrorFile}:8M`]);
    const m = listeningAddresses(await mirror.waitForLine(/^listening /));
    const primary = new CliProcess(t, [
      'primary', '--peer', `127.0.0.1:${m.mirror!.port}`, '--volume', `disk=${primaryFile}:8M`, '--mode', 'sync', '--nbd', '127.0.0.1:0',
    ]);
    const p = listeningAddresses(await primary.waitForLine(/^listening /));
    await primary.waitForLine(/^link up /);

    const image = randomBytes(8 * MiB);
    const src = path.join(dir, 'src.img');
    await fs.writeFile(src, image);
    ok(await runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, `nbd://127.0.0.1:${p.nbd!.port}/disk`]), 'qemu-img convert');
    // Sync mode: qemu-img got each reply after the mirror wrote the data; no drain needed.
    assert.equal(sha256(await fs.readFile(mirrorFile)), sha256(image), 'mirror file');
    assert.equal(sha256(await fs.readFile(primaryFile)), sha256(image), 'primary file');

    assert.deepEqual(await primary.stop(), { code: 0, signal: null }, primary.stderr);
    assert.deepEqual(await mirror.stop(), { code: 0, signal: null }, mirror.stderr);
    assert.equal(sha256(await fs.readFile(mirrorFile)), sha256(image), 'mirror file after shutdown');
  });

  test('issue 13 (3): qemu-img convert -n of a sparse image into a sync-mirrored export with state directories: data on both sides, and the primary and MIRROR files stay sparse (the holes travel as zero ranges of known-zero regions)', async (t) => {
    if (!requireTool('qemu-img', t)) return;
    const dir = await tmpDir(t);
    const size = 64 * MiB;
    const mirrorFile = path.join(dir, 'mirror.img');
    const primaryFile = path.join(dir, 'primary.img');
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `disk=${mirrorFile}:64M`, '--state-dir', path.join(dir, 'm-state')]);
    const m = listeningAddresses(await mirror.waitForLine(/^listening /));
    const primary = new CliProcess(t, [
      'primary', '--peer', `127.0.0.1:${m.mirror!.port}`, '--volume', `disk=${primaryFile}:64M`, '--mode', 'sync', '--nbd', '127.0.0.1:0', '--state-dir', path.join(dir, 'p-state'),
    ]);
    const p = listeningAddresses(await primary.waitForLine(/^listening /));
    await primary.waitForLine(/^link up /);

    const image = Buffer.alloc(size);
    randomBytes(512 * 1024).copy(image, 8 * MiB);
    randomBytes(256 * 1024).copy(image, 50 * MiB);
    const src = path.join(dir, 'src.img');
    const h = await fs.open(src, 'w');
    await h.truncate(size);
    await h.write(image, 8 * MiB, 512 * 1024, 8 * MiB);
    await h.write(image, 50 * MiB, 256 * 1024, 50 * MiB);
    await h.close();
    ok(await runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, `nbd://127.0.0.1:${p.nbd!.port}/disk`]), 'qemu-img convert');
    assert.deepEqual(await primary.stop(), { code: 0, signal: null }, primary.stderr);
    assert.deepEqual(await mirror.stop(), { code: 0, signal: null }, mirror.stderr);
    for (const [side, file] of [['primary', primaryFile], ['mirror', mirrorFile]] as const) {
      assert.equal(sha256(await fs.readFile(file)), sha256(image), `${side} file`);
      const allocated = (await fs.stat(file)).blocks * 512;
      assert.ok(allocated <= 3 * MiB, `the ${side} file allocates ${allocated / 1024} KiB for 768 KiB of data`);
    }
  });

  test('blockmirror mirror --nbd: the read-only export refuses qemu-io writes and serves reads', async (t) => {
    if (!requireTool(['qemu-io', 'nbdinfo'], t)) return;
    const dir = await tmpDir(t);
    const file = path.join(dir, 'mirror.img');
    const content = Buffer.alloc(MiB, 0x42);
    await fs.writeFile(file, content);
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `disk=${file}`, '--nbd', '127.0.0.1:0']);
    const line = await mirror.waitForLine(/^listening /);
    assert.match(line, /^listening mirror=127\.0\.0\.1:\d+ nbd=127\.0\.0\.1:\d+$/);
    const uri = `nbd://127.0.0.1:${listeningAddresses(line).nbd!.port}/disk`;

    const info = await runTool(t, 'nbdinfo', ['--json', uri]);
    ok(info, 'nbdinfo');
    const exp = (JSON.parse(info.stdout) as { exports: Array<{ is_read_only: boolean; 'export-size': number }> }).exports[0]!;
    assert.equal(exp.is_read_only, true);
    assert.equal(exp['export-size'], MiB);

    const w = await runTool(t, 'qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0xab 0 4k']);
    assert.notEqual(w.code, 0, 'the write must fail');
    assert.match(w.stdout + w.stderr, /permission denied|read-only|read only/i);
    ok(await runTool(t, 'qemu-io', ['-r', '-f', 'raw', uri, '-c', 'read -P 0x42 0 64k']), 'qemu-io read');

    assert.deepEqual(await mirror.stop(), { code: 0, signal: null }, mirror.stderr);
    assert.ok((await fs.readFile(file)).equals(content), 'the mirror file is unchanged');
  });
});
