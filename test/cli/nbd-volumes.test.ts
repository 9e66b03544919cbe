/**
 * Volumes on NBD servers with the real `blockmirror` processes: a mirror whose
 * volume is a qcow2 image served by qemu-nbd (Unix socket) and a primary whose
 * volume is an export of an NbdServer in this process (TCP). Missing tools
 * skip the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { startQemuNbd } from '../helpers/nbd-servers.js';
import { requireTool, runTool } from '../helpers/tools.js';
import { CliProcess, listeningAddresses, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;

describe('blockmirror CLI with volumes on NBD servers', () => {
  test('SPEC 10: a sync write through the primary\'s NBD export lands in the mirror\'s qcow2 image (qemu-nbd) before the tool exits; qemu-img compare agrees after shutdown', async (t) => {
    if (!requireTool(['qemu-nbd', 'qemu-img', 'nbdcopy'], t)) return;
    const dir = await tmpDir(t);
    const image = path.join(dir, 'mirror.qcow2');
    const created = await runTool(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', image, '4M']);
    assert.equal(created.code, 0, created.stderr);
    const qemu = await startQemuNbd(image, 'qcow2');
    t.after(() => qemu.stop());

    // the primary's volume: an export of an NBD server over TCP
    const primaryDisk = new MemoryBlockDevice(4 * MiB);
    const server = new NbdServer({ exports: [{ name: 'pvol', readOnly: false, backend: primaryDisk }] });
    const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
    t.after(() => server.close());

    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${qemu.uri}`, '--state-dir', path.join(dir, 'mirror-state')]);
    const mirrorAddr = listeningAddresses(await mirror.waitForLine(/^listening mirror=/)).mirror!;
    assert.ok(mirror.lines.includes(`volume v path=${qemu.uri} size=${4 * MiB}`), mirror.stdout);
    const primary = new CliProcess(t, [
      'primary',
      '--peer',
      `${mirrorAddr.host}:${mirrorAddr.port}`,
      '--volume',
      `v=nbd://127.0.0.1:${port}/pvol`,
      '--mode',
      'sync',
      '--nbd',
      '127.0.0.1:0',
      '--state-dir',
      path.join(dir, 'primary-state'),
    ]);
    const front = listeningAddresses(await primary.waitForLine(/^listening /)).nbd!;
    await primary.waitForLine(/^link up /);

    const source = path.join(dir, 'source.img');
    const data = randomBytes(4 * MiB);
    data.fill(0, MiB, 2 * MiB);
    await fs.writeFile(source, data);
    const copy = await runTool(t, 'nbdcopy', ['--flush', source, `nbd://${front.host}:${front.port}/v`]);
    assert.equal(copy.code, 0, copy.stderr);

    // sync mode: every write was in the qcow2 (through qemu-nbd) when nbdcopy got its reply
    const readBack = path.join(dir, 'readback.img');
    const out = await runTool(t, 'nbdcopy', [qemu.uri, readBack]);
    assert.equal(out.code, 0, out.stderr);
    assert.ok((await fs.readFile(readBack)).equals(data), 'the mirror\'s qcow2 holds what was written');
    assert.ok((await primaryDisk.read(0, 4 * MiB)).equals(data), 'the primary\'s NBD volume holds it too');

    assert.equal((await primary.stop()).code, 0, primary.stderr);
    assert.equal((await mirror.stop()).code, 0, mirror.stderr);
    await qemu.stop();
    const compare = await runTool(t, 'qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', source, image]);
    assert.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`);
    const check = await runTool(t, 'qemu-img', ['check', '-q', image]);
    assert.equal(check.code, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
  });

  test('a volume whose NBD server is not there: the mirror exits 1 with one BM_ERR_CONNECT_FAILED line naming the volume', async (t) => {
    const dir = await tmpDir(t);
    const socket = path.join(dir, 'nobody.sock');
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=nbd+unix:///x?socket=${socket}`, '--state-dir', dir]);
    const exit = await mirror.exited;
    assert.equal(exit.code, 1);
    assert.match(mirror.stderr, /^blockmirror: BM_ERR_CONNECT_FAILED: volume v: cannot connect to the NBD server nbd\+unix:/m);
  });
});
