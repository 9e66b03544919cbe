/**
 * NbdBlockDevice passes the BlockDevice compliance suite against blockmirror's
 * own NbdServer, `nbdkit memory`, `nbdkit file` (a sparse file), `nbdkit
 * --no-sr` (simple replies only) and `qemu-nbd` serving a qcow2 image. Every
 * device gets a fresh server (started before the device, stopped at the next
 * device or at the end of the file). Missing tools skip, or fail under CI=true.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { NbdBlockDevice } from '../../src/nbd/nbd-block-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';
import { missingTools, requireTool } from '../helpers/tools.js';
import { startNbdkit, startQemuNbd } from '../helpers/nbd-servers.js';

/** Servers of earlier devices: stopped before the next device starts (the suite runs its tests one at a time). */
const running: Array<() => Promise<void>> = [];
async function stopAll(): Promise<void> {
  for (const stop of running.splice(0)) await stop();
}
after(stopAll);

async function ownServer(size: number, blockSize: number): Promise<NbdBlockDevice> {
  await stopAll();
  const server = new NbdServer({ exports: [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(size, { blockSize }) }] });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  running.push(() => server.close());
  return NbdBlockDevice.open(`nbd://127.0.0.1:${port}/disk`, { blockSize, size });
}

blockDeviceSuite({
  name: 'NbdBlockDevice on NbdServer (memory backend)',
  create: ownServer,
  reopen: (device) => NbdBlockDevice.open((device as NbdBlockDevice).uri, { blockSize: device.blockSize }),
  supports: { trim: true, flush: true, fua: true, reopen: true, allocation: true },
});

/** Registers the suite for a system tool, or one test that skips (fails under CI=true) when the tool is missing. */
function toolSuite(tools: string[], name: string, create: (size: number, blockSize: number) => Promise<NbdBlockDevice>, allocation: boolean): void {
  if (missingTools(...tools) !== false) {
    describe(`BlockDevice compliance: ${name}`, () => {
      it(`needs ${tools.join(', ')}`, (t) => {
        requireTool(tools, t);
      });
    });
    return;
  }
  blockDeviceSuite({
    name,
    create,
    reopen: (device) => NbdBlockDevice.open((device as NbdBlockDevice).uri, { blockSize: device.blockSize }),
    supports: { trim: true, flush: true, fua: true, reopen: true, allocation },
  });
}

toolSuite(['nbdkit'], 'NbdBlockDevice on nbdkit memory', async (size, blockSize) => {
  await stopAll();
  const server = await startNbdkit('memory', [String(size)]);
  running.push(server.stop);
  return NbdBlockDevice.open(server.uri, { blockSize });
}, true);

toolSuite(['nbdkit'], 'NbdBlockDevice on nbdkit memory without structured replies (--no-sr)', async (size, blockSize) => {
  await stopAll();
  const server = await startNbdkit('memory', [String(size)], ['--no-sr']);
  running.push(server.stop);
  return NbdBlockDevice.open(server.uri, { blockSize });
}, false);

toolSuite(['nbdkit'], 'NbdBlockDevice on nbdkit file (sparse file)', async (size, blockSize) => {
  await stopAll();
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bm-nbdfile-'));
  const file = path.join(dir, 'disk.img');
  await fsp.writeFile(file, '');
  await fsp.truncate(file, size);
  const server = await startNbdkit('file', [file]);
  running.push(async () => {
    await server.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return NbdBlockDevice.open(server.uri, { blockSize });
}, true);

toolSuite(['qemu-nbd', 'qemu-img'], 'NbdBlockDevice on qemu-nbd serving a qcow2 image', async (size, blockSize) => {
  await stopAll();
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bm-qcow2-'));
  const image = path.join(dir, 'disk.qcow2');
  await promisify(execFile)('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(size)]);
  const server = await startQemuNbd(image, 'qcow2');
  running.push(async () => {
    await server.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return NbdBlockDevice.open(server.uri, { blockSize });
}, true);
