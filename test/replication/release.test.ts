/**
 * Issue 12 (5): `MirrorTarget.release` hands a promoted volume's device and
 * pairing state over to a primary in the same process; a refused or failed
 * release changes nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError } from '../../src/errors.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import { MemoryPairStateStore, type PairState } from '../../src/replication/pair-state.js';

const A = '10.7.0.1';
const T = '10.7.0.2';
const SIZE = 1 << 20;

/** A pairing-state store that counts its saves. */
class CountingStore extends MemoryPairStateStore {
  saves = 0;
  override async save(state: PairState): Promise<void> {
    this.saves++;
    await super.save(state);
  }
}

test('issue 12 (5): MirrorTarget.release: refused before a promotion and twice, a failing flush changes nothing; once released the target never writes the device or the pairing state again and a primary continues the promoted generation', async () => {
  const network = new MemoryNetwork();
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const tDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const tStore = new CountingStore();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, volumes: [{ name: 'v', device: tDev, state: tStore }], heartbeats: false });
  const a = await createPrimary({ transport: network.transport({ host: A }), peer: { host: T, port: 7000 }, heartbeats: false, volumes: [{ name: 'v', device: aDev, mode: 'sync', state: new MemoryPairStateStore(), initialSync: 'none' }] });
  let closed = false;
  try {
    await a.volume('v').write(0, Buffer.alloc(4096, 1));
    await a.drain();
    await assert.rejects(target.release('v'), { code: 'BM_ERR_INVALID_ARGUMENT', message: /not promoted/ });
    await assert.rejects(target.release('nope'), { code: 'BM_ERR_UNKNOWN_VOLUME' });
    await a.close({ drain: false });
    const promoted = await target.promote('v', { force: true });

    // the device's flush fails: refused, the target keeps the volume (and still records its state)
    const flush = tDev.flush.bind(tDev);
    tDev.flush = () => Promise.reject(new BlockMirrorError('BM_ERR_IO', 'flush failed (test)'));
    await assert.rejects(target.release('v'), { code: 'BM_ERR_IO' });
    tDev.flush = flush;
    assert.equal(target.status().volumes.v!.released, undefined);
    assert.equal(target.status().volumes.v!.role, 'promoted');

    const released = await target.release('v');
    assert.equal(released.device, tDev);
    assert.equal(target.status().volumes.v!.released, true);
    await assert.rejects(target.release('v'), { code: 'BM_ERR_INVALID_ARGUMENT', message: /released already/ });
    await assert.rejects(target.resolve('v', 'discard-local'), { code: 'BM_ERR_VOLUME_BUSY' });

    // a primary on the same device and pairing state continues the promoted generation
    const b = await createPrimary({ transport: network.transport({ host: T }), peer: { host: '10.7.0.99', port: 1 }, waitForConnection: false, heartbeats: false, volumes: [{ name: 'v', device: tDev, mode: 'sync', state: tStore }] });
    try {
      assert.equal(b.volume('v').generation, promoted.generation);
      await b.volume('v').write(8192, Buffer.alloc(4096, 0xbb));
      const saves = tStore.saves;
      let flushes = 0;
      tDev.flush = () => {
        flushes++;
        return flush();
      };
      await target.close();
      closed = true;
      assert.equal(tStore.saves, saves, 'the target did not write the released volume\'s pairing state at close');
      assert.equal(flushes, 0, 'nor touched its device');
      tDev.flush = flush;
    } finally {
      await b.close({ drain: false });
    }
    const state = await tStore.load();
    // it wrote with its peer unreachable: a new generation that descends from the promoted one
    assert.ok(state!.generations!.current === promoted.generation || state!.generations!.history.includes(promoted.generation), JSON.stringify(state));
    assert.equal(state!.role, 'primary');
    assert.equal((await tDev.read(8192, 512))[0], 0xbb);
  } finally {
    await a.close({ drain: false });
    if (!closed) await target.close();
  }
});
