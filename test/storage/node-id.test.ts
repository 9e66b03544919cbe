/**
 * Issue 12, item 8: node ids generated once and kept in the state directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { NODE_ID_FILE, persistentNodeId } from '../../src/storage/node-id.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';

async function tmp(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blockmirror-node-id-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a node id is generated once and read back unchanged', async (t) => {
  const dir = await tmp(t);
  const id = await persistentNodeId(dir, 'primary');
  assert.match(id, /^primary-[0-9a-f]{8}$/);
  assert.equal(await persistentNodeId(dir, 'primary'), id);
  assert.equal(await persistentNodeId(dir, 'other-prefix'), id, 'the prefix only names a new id');
  assert.deepEqual(await fs.readdir(dir), [NODE_ID_FILE]);
});

test('a damaged node id file is refused with a coded error, not replaced', async (t) => {
  const dir = await tmp(t);
  await persistentNodeId(dir, 'primary');
  const file = path.join(dir, NODE_ID_FILE);
  const text = await fs.readFile(file, 'utf8');
  await fs.writeFile(file, text.replace('primary-', 'primarx-'));
  await assert.rejects(persistentNodeId(dir, 'primary'), { code: 'BM_ERR_JOURNAL_CORRUPT' });
  assert.equal(await fs.readFile(file, 'utf8'), text.replace('primary-', 'primarx-'));
  await assert.rejects(persistentNodeId('', 'x'), { code: 'BM_ERR_INVALID_ARGUMENT' });
  await assert.rejects(persistentNodeId(dir, ''), { code: 'BM_ERR_INVALID_ARGUMENT' });
});

test('a mirror target with a state directory keeps its node id across restarts; an explicit nodeId wins', async (t) => {
  const dir = await tmp(t);
  const network = new MemoryNetwork();
  const start = (nodeId?: string) =>
    createMirrorTarget({
      transport: network.transport({ host: '10.14.0.2' }),
      listen: { host: '10.14.0.2', port: 7000 },
      stateDir: dir,
      volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 16, { blockSize: 512 }) }],
      ...(nodeId === undefined ? {} : { nodeId }),
    });
  const first = await start();
  const id = first.nodeId;
  assert.match(id, /^target-[0-9a-f]{8}$/);
  assert.equal(first.status().node, id);
  await first.close();
  const second = await start();
  assert.equal(second.nodeId, id);
  await second.close();
  const named = await start('mirror-a');
  assert.equal(named.nodeId, 'mirror-a');
  await named.close();
});

test('issue 12 (8): a primary with a state directory keeps its node id across restarts and shares it with a mirror target on the same directory (a promoted mirror keeps its id); an explicit nodeId wins; without a directory it is random', async (t) => {
  const dir = await tmp(t);
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({
    transport: network.transport({ host: '10.14.0.3' }),
    listen: { host: '10.14.0.3', port: 7000 },
    volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 16, { blockSize: 512 }) }],
  });
  t.after(() => target.close());
  const device = new MemoryBlockDevice(1 << 16, { blockSize: 512 });
  const start = (options: { stateDir?: string; nodeId?: string }) =>
    createPrimary({
      transport: network.transport({ host: '10.14.0.4' }),
      peer: target.address,
      volumes: [{ name: 'v', device, mode: 'sync', initialSync: 'none' }],
      waitForConnection: false,
      ...options,
    });
  // the directory a mirror target used first: the primary takes its id
  const mirrorId = await persistentNodeId(dir, 'target');
  const first = await start({ stateDir: dir });
  assert.equal(first.nodeId, mirrorId);
  await first.close();
  const second = await start({ stateDir: dir });
  assert.equal(second.nodeId, mirrorId, 'the same id after a restart');
  await second.close();
  const named = await start({ stateDir: dir, nodeId: 'primary-x' });
  assert.equal(named.nodeId, 'primary-x');
  await named.close();
  const a = await start({});
  const b = await start({});
  assert.notEqual(a.nodeId, b.nodeId, 'no directory: a random id each time');
  await a.close();
  await b.close();
});
