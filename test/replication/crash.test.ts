import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { FaultyBlockDevice } from '../../src/device/faulty-device.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';

const fixture = new URL('./fixtures/crashing-primary.ts', import.meta.url).pathname;

test('SPEC 16/19: kill -9 of the primary mid-workload; the restarted primary replays its journal and the target holds every acknowledged write', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-crash-'));
  // a slow target so that the journal holds a backlog when the primary dies
  const slow = new FaultyBlockDevice(new MemoryBlockDevice(4 << 20, { blockSize: 512 }));
  slow.addFault({ op: 'write', latencyMs: 5 });
  const target = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: slow }] });
  const acked: number[] = [];
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, String(target.address.port), join(dir, 'journal'), join(dir, 'primary.img')], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    const lines = createInterface({ input: child.stdout! });
    for await (const line of lines) {
      if (line.startsWith('ack ')) acked.push(Number(line.slice(4)));
      if (acked.length === 300) {
        child.kill('SIGKILL');
        break;
      }
    }
    assert.equal(await exited, 'SIGKILL');
    const backlog = acked.length - target.volume('v').status().appliedWrites;
    assert.ok(backlog > 0, `the target was behind when the primary died (backlog ${backlog})`);
    slow.clearFaults();

    const device = await FileBlockDevice.open(join(dir, 'primary.img'));
    const primary = await createPrimary({
      peer: target.address,
      journal: { dir: join(dir, 'journal'), fsync: 'always' },
      volumes: [{ name: 'v', device, mode: 'async' }],
    });
    await primary.drain(30000);
    for (const i of acked) {
      const block = await slow.read(i * 4096, 4096);
      assert.ok(block.every((b) => b === (i % 251) + 1), `acknowledged write ${i} is on the target`);
    }
    assert.equal(primary.volume('v').status().journalEntries, 0);
    await primary.close();
    await device.close();
  } finally {
    await target.close();
    await rm(dir, { recursive: true, force: true });
  }
});
