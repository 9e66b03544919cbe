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
