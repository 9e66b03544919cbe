/**
 * Pair state stores (a volume's lineage and disk states, kept on both sides):
 * the compliance suite on the memory and the file store, and what only the
 * file store does (atomic crash-safe file, damaged files detected).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FilePairStateStore, MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { newGenerationId } from '../../src/replication/generation.js';
import { pairStateSuite } from '../../src/testing/pair-state-suite.js';

const dir = await mkdtemp(join(tmpdir(), 'bm-pair-state-'));
after(() => rm(dir, { recursive: true, force: true }));
let n = 0;

pairStateSuite({ name: 'MemoryPairStateStore', create: async () => new MemoryPairStateStore() });
pairStateSuite({
  name: 'FilePairStateStore',
  create: async () => new FilePairStateStore(join(dir, `v${++n}.state`)),
  reopen: async (store) => new FilePairStateStore((store as FilePairStateStore).path),
});

describe('FilePairStateStore', () => {
  it('a damaged file is reported (BM_ERR_JOURNAL_CORRUPT), not read as never paired', async () => {
    const path = join(dir, 'damaged.state');
    const store = new FilePairStateStore(path);
    await store.save({ generations: { current: newGenerationId(), history: [] }, disk: 'up-to-date', peer: 'up-to-date' });
    const text = await readFile(path, 'utf8');
    await writeFile(path, text.replace('up-to-date', 'up-to-dat3'));
    await assert.rejects(store.load(), { code: 'BM_ERR_JOURNAL_CORRUPT' });
  });

  it('a file that holds no pair state is refused with BM_ERR_INVALID_ARGUMENT', async () => {
    const path = join(dir, 'other.state');
    // a well-formed state file (JSON + CRC) of something else, e.g. an apply state
    const { writeStateFile } = await import('../../src/storage/state-file.js');
    await writeStateFile(path, { stream: 'abc', applied: 3 });
    await assert.rejects(new FilePairStateStore(path).load(), { code: 'BM_ERR_INVALID_ARGUMENT' });
  });

  it('an empty path is refused', () => {
    assert.throws(() => new FilePairStateStore(''), { code: 'BM_ERR_INVALID_ARGUMENT' });
  });
});
