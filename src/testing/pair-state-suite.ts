/**
 * The {@link PairStateStore} compliance suite: one set of `node:test` tests
 * that every store of a volume's pairing state must pass (the memory and
 * file stores of this package, and yours).
 *
 * @module
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BlockMirrorError } from '../errors.js';
import { MAX_HISTORY, newGenerationId } from '../replication/generation.js';
import { DISK_STATES, type PairState, type PairStateStore } from '../replication/pair-state.js';

/** Options of {@link pairStateSuite}. */
export interface PairStateSuiteOptions {
  /** Name of the implementation (the title of the test group). */
  name: string;
  /** Creates a fresh store that holds nothing yet. */
  create(): Promise<PairStateStore>;
  /**
   * A new store over the same backing storage as `store` (as after a restart
   * of the process). When given, the suite checks that saved state survives it.
   */
  reopen?(store: PairStateStore): Promise<PairStateStore>;
}

function sample(overrides: Partial<PairState> = {}): PairState {
  return {
    generations: { current: newGenerationId(3_000_000), history: [newGenerationId(2_000_000), newGenerationId(1_000_000)] },
    disk: 'up-to-date',
    peer: 'outdated',
    lastInSync: 1_700_000_000_000,
    ...overrides,
  };
}

async function rejectsInvalid(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof BlockMirrorError, `expected a BlockMirrorError, got ${String(error)}`);
    assert.equal(error.code, 'BM_ERR_INVALID_ARGUMENT');
    return true;
  });
}

/**
 * Registers the {@link PairStateStore} compliance tests (with `describe`/`it`
 * from `node:test`) for one implementation.
 *
 * Covered: a new store loads `undefined` (never paired); a saved state loads
 * back equal, as a copy that shares nothing with the caller's objects; a save
 * replaces the whole state (no merge of absent fields); every disk state, a
 * blank target's state without generations, and `lastInSync` round-trip; a
 * history longer than {@link MAX_HISTORY} is cut to it; an invalid state
 * (unknown disk state, bad generation id, negative time) is refused with
 * `BM_ERR_INVALID_ARGUMENT` and leaves the stored state as it was; with
 * `reopen`, the state survives a new store over the same storage.
 *
 * ```ts
 * pairStateSuite({ name: 'MyStore', create: async () => new MyStore(await freshPath()) });
 * ```
 */
export function pairStateSuite(options: PairStateSuiteOptions): void {
  const { create } = options;
  describe(`${options.name}: PairStateStore compliance`, () => {
    it('a new store holds nothing: load() resolves undefined (never paired)', async () => {
      assert.equal(await (await create()).load(), undefined);
    });

    it('save() then load() gives the state back, as a copy', async () => {
      const store = await create();
      const state = sample();
      const expected = structuredClone(state);
      await store.save(state);
      const loaded = await store.load();
      assert.deepEqual(loaded, expected);
      // neither the caller's object nor the loaded one is the store's own
      state.generations!.history.push(newGenerationId());
      state.disk = 'diverged';
      loaded!.generations!.current = newGenerationId();
      loaded!.generations!.history.length = 0;
      assert.deepEqual(await store.load(), expected);
    });

    it('save() replaces the whole state: fields absent from the new one are gone', async () => {
      const store = await create();
      await store.save(sample());
      const next: PairState = { disk: 'inconsistent', peer: 'unknown' };
      await store.save(next);
      assert.deepEqual(await store.load(), next);
    });

    it('every disk state, on both sides, round-trips', async () => {
      const store = await create();
      for (const disk of DISK_STATES) {
        for (const peer of DISK_STATES) {
          const state = sample({ disk, peer });
          await store.save(state);
          assert.deepEqual(await store.load(), state, `${disk}/${peer}`);
        }
      }
    });

    it(`a history longer than ${MAX_HISTORY} generations is kept to the ${MAX_HISTORY} most recent`, async () => {
      const store = await create();
      const history = Array.from({ length: MAX_HISTORY + 5 }, (_, i) => newGenerationId(2_000_000 - i));
      await store.save(sample({ generations: { current: newGenerationId(3_000_000), history } }));
      assert.deepEqual((await store.load())!.generations!.history, history.slice(0, MAX_HISTORY));
    });

    it('an invalid state is refused with BM_ERR_INVALID_ARGUMENT and the stored one stays', async () => {
      const store = await create();
      const good = sample();
      await store.save(good);
      const bad: unknown[] = [
        { ...good, disk: 'fine' },
        { ...good, peer: undefined },
        { ...good, generations: { current: 'not-an-id', history: [] } },
        { ...good, generations: { current: newGenerationId(), history: ['nope'] } },
        { ...good, lastInSync: -1 },
        { ...good, lastInSync: 1.5 },
        null,
      ];
      for (const state of bad) await rejectsInvalid(store.save(state as PairState));
      assert.deepEqual(await store.load(), good);
    });

    if (options.reopen !== undefined) {
      const reopen = options.reopen;
      it('the state survives a new store over the same storage (a restart)', async () => {
        const store = await create();
        const state = sample({ disk: 'inconsistent', peer: 'up-to-date' });
        await store.save(state);
        assert.deepEqual(await (await reopen(store)).load(), state);
        const blank: PairState = { disk: 'unknown', peer: 'unknown' };
        await store.save(blank);
        assert.deepEqual(await (await reopen(store)).load(), blank);
      });
    }
  });
}
