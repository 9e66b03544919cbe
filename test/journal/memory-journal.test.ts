import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isBlockMirrorError } from '../../src/errors.js';
import { MEMORY_RECORD_OVERHEAD, MemoryJournal } from '../../src/journal/memory-journal.js';
import { journalSuite } from './journal-suite.js';

journalSuite({
  name: 'MemoryJournal',
  create: async (capacityBytes) => new MemoryJournal({ capacityBytes }),
  footprint: (dataLength) => dataLength + MEMORY_RECORD_OVERHEAD,
  reserveBytes: 0,
});

describe('MemoryJournal', () => {
  it('refuses a bad capacity with BM_ERR_INVALID_ARGUMENT', () => {
    for (const capacityBytes of [0, -1, 100, 1.5, Number.NaN, '1024']) {
      assert.throws(
        () => new MemoryJournal({ capacityBytes: capacityBytes as number }),
        (error: unknown) => isBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT'),
      );
    }
  });

  it('keeps the caller buffer without copying it', async () => {
    const journal = new MemoryJournal({ capacityBytes: 4096 });
    const data = Buffer.from('abcd');
    await journal.append({ seq: 1, offset: 0, data, fua: false, timestamp: 0 });
    for await (const entry of journal.pending()) assert.equal(entry.data, data);
    await journal.close();
  });
});
