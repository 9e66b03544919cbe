/**
 * Freeze/copy cycles received by a mirror target on its own port (the
 * target's `cycle` option): what `blockmirror primary --mode cycle` talks to.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import { createCycleSource, type CycleSource } from '../../src/cycle/cycle-runner.js';
import type { LayeredVolume } from '../../src/cycle/layered-volume.js';
import type { StagingStoreHooks } from '../../src/cycle/staging-store.js';
import { normalizeStatus } from '../../src/admin/status.js';
import { BlockMirrorError, isBlockMirrorError } from '../../src/errors.js';
import { linksUp, openVolume, pattern, subDir, tempDir, waitFor } from '../cycle/helpers.js';

const root = tempDir('mirror-cycle');
after(root.cleanup);
const KiB = 1024;
const MiB = 1024 * 1024;
let seq = 0;

interface Setup {
  net: MemoryNetwork;
  volume: LayeredVolume;
  device: FileBlockDevice;
  target: MirrorTarget;
  source: CycleSource;
  close(): Promise<void>;
}

async function setup(options: { cycle?: boolean; size?: number; hooks?: StagingStoreHooks } = {}): Promise<Setup> {
  const dir = subDir(root.dir, `case-${++seq}`);
  const size = options.size ?? MiB;
  const net = new MemoryNetwork();
  const device = await FileBlockDevice.open(join(dir, 'mirror.img'), { size, blockSize: 512 });
  const target = await createMirrorTarget({
    listen: { host: 'm', port: 7000 },
    volumes: [{ name: 'v', device }],
    transport: net.transport({ host: 'm' }),
    heartbeats: false,
    ...(options.cycle === false ? {} : { cycle: { dir: subDir(dir, 'state'), ...(options.hooks === undefined ? {} : { hooks: options.hooks }) } }),
  });
  const volume = await openVolume(dir, 'primary.img', size, { chunkSize: 64 * KiB });
  const source = await createCycleSource({
    volumes: [{ name: 'v', volume }],
    targets: [{ host: 'm', port: 7000 }],
    transport: net.transport({ host: 'p' }),
    interval: 0,
    retryDelay: { min: 10, max: 50 },
  });
  return {
    net,
    volume,
    device,
    target,
    source,
    close: async () => {
      await source.close();
      await volume.close();
      await target.close();
      await device.close();
    },
  };
}

describe('mirror target receiving cycles', () => {
  it('SPEC 30/31: a mirror target with a cycle state directory receives freeze/copy cycles on its mirror port; status shows the freeze and the source', async () => {
    const s = await setup();
    try {
      await linksUp(s.source);
      const blank = normalizeStatus(s.source.status()).volumes.v!;
      assert.deepEqual({ inSync: blank.inSync, pending: blank.pendingBytes }, { inSync: false, pending: MiB }, 'a target without any freeze lacks the whole volume');
      await s.volume.write(0, pattern(MiB, 1));
      const first = await s.source.freezeNow();
      assert.equal(first.targets[0]!.ok, true);
      assert.deepEqual(await s.device.read(0, MiB), pattern(MiB, 1), 'cycle 1: the whole image');

      await s.volume.write(128 * KiB, pattern(4 * KiB, 2));
      await s.volume.write(256 * KiB, pattern(4 * KiB, 3));
      const expected = await s.volume.read(0, MiB);
      const second = await s.source.freezeNow();
      assert.equal(second.targets[0]!.ok, true);
      assert.ok(second.bytesSent < 64 * KiB, `cycle 2 sent ${second.bytesSent} bytes for 8 KiB of changes`);
      assert.deepEqual(await s.device.read(0, MiB), expected);
      assert.deepEqual(await s.target.volume('v').read(0, MiB), expected, 'reads through the target volume see the same image');

      const status = s.target.status();
      assert.equal(status.volumes.v!.cycle?.freeze, 2);
      assert.equal(status.volumes.v!.cycle?.source, s.source.nodeId);
      assert.equal(status.volumes.v!.cycle?.committed, 2);
      assert.deepEqual(
        status.peers.map((p) => [p.node, p.mode, p.link]),
        [[s.source.nodeId, 'cycle', 'up']],
      );
      const admin = normalizeStatus(status);
      assert.equal(admin.volumes.v!.state, 'mirroring');
      assert.equal(admin.volumes.v!.replicatedBytes, MiB + 8 * KiB);

      const sourceAdmin = normalizeStatus(s.source.status());
      assert.equal(sourceAdmin.role, 'primary');
      assert.deepEqual(
        { mode: sourceAdmin.volumes.v!.mode, inSync: sourceAdmin.volumes.v!.inSync, pending: sourceAdmin.volumes.v!.pendingBytes, state: sourceAdmin.volumes.v!.state },
        { mode: 'cycle', inSync: true, pending: 0, state: 'in-sync' },
      );
      assert.equal(sourceAdmin.peers[0]!.link, 'up');
      await s.volume.write(0, pattern(8 * KiB, 4));
      const dirty = normalizeStatus(s.source.status()).volumes.v!;
      assert.deepEqual({ inSync: dirty.inSync, pending: dirty.pendingBytes, state: dirty.state }, { inSync: false, pending: 8 * KiB, state: 'replicating' });
    } finally {
      await s.close();
    }
  });

  it('SPEC 31: a read of the target volume while a cycle merges into it waits for the merge: it sees freeze k-1 or freeze k, never a mix', async () => {
    let pause: { reached: () => void; go: Promise<void> } | undefined;
    let release!: () => void;
    const s = await setup({
      hooks: {
        beforeMergeWrite: async () => {
          if (pause === undefined) return;
          const p = pause;
          pause = undefined;
          p.reached();
          await p.go;
        },
      },
    });
    try {
      await linksUp(s.source);
      await s.volume.write(0, pattern(MiB, 7));
      await s.source.freezeNow();
      const before = await s.target.volume('v').read(0, MiB);
      for (let i = 0; i < 4; i++) await s.volume.write(i * 256 * KiB, pattern(64 * KiB, 10 + i));
      const after = await s.volume.read(0, MiB);
      const reached = new Promise<void>((resolve) => {
        pause = { reached: resolve, go: new Promise<void>((r) => (release = r)) };
      });
      const cycle = s.source.freezeNow();
      await reached; // the merge into the image is under way and held
      let read: Buffer | undefined;
      const reading = s.target.volume('v').read(0, MiB).then((b) => (read = b));
      for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
      assert.equal(read, undefined, 'the read waits for the merge');
      release();
      await reading;
      await cycle;
      assert.notDeepEqual(before, after);
      assert.deepEqual(read, after, 'the read sees the complete new image');
    } finally {
      release?.();
      await s.close();
    }
  });

  it('SPEC 31/33: a merge that fails with an I/O error leaves the mirror target volume unreadable (reads wait) until a retry completes it; the source catches up', async () => {
    let failing = false;
    let writes = 0;
    const s = await setup({
      hooks: {
        beforeMergeWrite: () => {
          if (failing && ++writes > 2) throw new BlockMirrorError('BM_ERR_IO', 'injected EIO on the image');
        },
      },
    });
    try {
      await linksUp(s.source);
      await s.volume.write(0, pattern(MiB, 20));
      await s.source.freezeNow();
      const image1 = await s.target.volume('v').read(0, MiB);
      for (let i = 0; i < 16; i++) await s.volume.write(i * 64 * KiB, pattern(4 * KiB, 30 + i));
      failing = true;
      const failed = await s.source.freezeNow();
      assert.equal(failed.targets[0]!.ok, false, 'the source was told the commit did not happen');
      const image2 = await s.volume.readFrozen(2, 0, MiB);
      const onDisk = await s.device.read(0, MiB);
      assert.ok(!onDisk.equals(image1) && !onDisk.equals(image2), 'the device holds a mix of freezes 1 and 2 (the scenario)');
      const status = s.target.status().volumes.v!.cycle!;
      assert.deepEqual({ freeze: status.freeze, to: status.mergeError?.to, code: status.mergeError?.code }, { freeze: 1, to: 2, code: 'BM_ERR_IO' });

      let read: Buffer | undefined;
      const reading = s.target.volume('v').read(0, MiB).then((b) => (read = b));
      reading.catch(() => undefined);
      for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
      assert.equal(read, undefined, 'the read waits while the image is between freezes');
      const caughtUp = waitFor(s.source, 'cycle', (r: { targets: Array<{ ok: boolean; freeze: number }> }) => r.targets[0]!.ok && r.targets[0]!.freeze === 2);
      failing = false;
      await reading;
      assert.ok(read!.equals(image2), 'the read returns exactly freeze 2');
      await caughtUp;
      assert.equal(s.target.status().volumes.v!.cycle?.freeze, 2);
      assert.equal(s.target.status().volumes.v!.cycle?.mergeError, undefined);
    } finally {
      await s.close();
    }
  });

  it('one writer per volume: a per-write primary is refused while a cycle source holds the volume, and afterwards because the volume holds a cycle image', async () => {
    const s = await setup();
    try {
      await linksUp(s.source);
      await s.volume.write(0, pattern(64 * KiB, 5));
      await s.source.freezeNow();
      const tryPrimary = async (): Promise<BlockMirrorError> => {
        const primary = await createPrimary({
          peer: { host: 'm', port: 7000 },
          volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'async' }],
          transport: s.net.transport({ host: 'q' }),
          heartbeats: false,
          waitForConnection: false,
        });
        try {
          const [error] = await waitFor<[BlockMirrorError]>(primary, 'connect-error');
          return error;
        } finally {
          await primary.close({ drain: false });
        }
      };
      const busy = await tryPrimary();
      assert.ok(isBlockMirrorError(busy, 'BM_ERR_VOLUME_BUSY'), `${busy.code}: ${busy.message}`);
      assert.match(busy.message, /freeze\/copy cycles/);

      await s.source.close();
      const refused = await tryPrimary();
      assert.ok(isBlockMirrorError(refused, 'BM_ERR_SPLIT_BRAIN'), `${refused.code}: ${refused.message}`);
      assert.deepEqual(await s.device.read(0, 64 * KiB), pattern(64 * KiB, 5), 'nothing was overwritten');
    } finally {
      await s.close();
    }
  });

  it('a volume holding a per-write primary\'s data refuses a cycle source with BM_ERR_SPLIT_BRAIN and keeps its data', async () => {
    const s = await setup();
    try {
      await s.source.close();
      const primary = await createPrimary({
        peer: { host: 'm', port: 7000 },
        volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'sync' }],
        transport: s.net.transport({ host: 'q' }),
        heartbeats: false,
      });
      const result = await primary.volume('v').write(0, pattern(64 * KiB, 6));
      assert.equal(result.mirror, 'acknowledged');
      await primary.close();
      const again = await createCycleSource({
        volumes: [{ name: 'v', volume: s.volume }],
        targets: [{ host: 'm', port: 7000 }],
        transport: s.net.transport({ host: 'p' }),
        interval: 0,
        group: 'again',
        retryDelay: { min: 10, max: 50 },
      });
      try {
        const t = again.status().targets[0]!;
        assert.equal(t.lastError?.code, 'BM_ERR_SPLIT_BRAIN', JSON.stringify(t));
        assert.deepEqual(await s.device.read(0, 64 * KiB), pattern(64 * KiB, 6), 'nothing was overwritten');
      } finally {
        await again.close();
      }
    } finally {
      await s.close();
    }
  });

  it('a mirror target without a cycle state directory refuses a cycle source with BM_ERR_NOT_SUPPORTED', async () => {
    const s = await setup({ cycle: false });
    try {
      while (s.source.status().targets[0]!.lastError === undefined) await waitFor(s.source, 'target-link');
      const t = s.source.status().targets[0]!;
      assert.equal(t.lastError?.code, 'BM_ERR_NOT_SUPPORTED');
      assert.notEqual(t.link, 'up');
      assert.equal(s.target.status().volumes.v!.cycle, undefined);
      assert.deepEqual(s.target.status().peers, []);
    } finally {
      await s.close();
    }
  });
});
