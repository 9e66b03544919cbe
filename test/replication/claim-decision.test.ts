/**
 * `decideClaim` is a pure function of the primary's handshake and the
 * target's volumes: these tests call it without a network and check that a
 * refusal is a thrown coded error (the caller then changes nothing) and that
 * an acceptance says exactly what the target must change.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideClaim, type ClaimView } from '../../src/replication/claim-decision.js';
import type { HelloHeader, VolumeOffer } from '../../src/codec/messages.js';
import { newGenerationId, type GenerationState } from '../../src/replication/generation.js';

const MiB = 1 << 20;

function hello(node = 'p1', session = 's1'): HelloHeader {
  return { protocol: [1, 1], node, session, slot: 0, slots: 1, features: [], nonce: new Uint8Array(32) };
}

function offer(name: string, generation: string, extra: Partial<VolumeOffer> = {}): VolumeOffer {
  return { name, size: MiB, blockSize: 512, generation, history: [], stream: 'aaaaaaaaaaaaaaaa', base: 0, ...extra };
}

function view(name: string, extra: Partial<ClaimView> = {}): ClaimView {
  return {
    name,
    size: MiB,
    blockSize: 512,
    owner: undefined,
    connections: 0,
    generations: undefined,
    disk: 'unknown',
    stream: undefined,
    cycleSource: undefined,
    cycleImage: undefined,
    ...extra,
  };
}

/** Deep-freezes the views so that a decision that tried to mutate one would throw a TypeError. */
function views(...vs: ClaimView[]): (name: string) => ClaimView | undefined {
  const byName = new Map(vs.map((v) => [v.name, deepFreeze(v)]));
  return (name) => byName.get(name);
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

// generation ids sort by creation time (12 hex digits of ms first)
const OLD = newGenerationId(1_000_000);
const MID = newGenerationId(2_000_000);
const NEW = newGenerationId(3_000_000);

test('decideClaim: an unknown volume is refused with BM_ERR_UNKNOWN_VOLUME', () => {
  assert.throws(() => decideClaim(hello(), [offer('nope', OLD)], views(view('v')), 'refuse'), { code: 'BM_ERR_UNKNOWN_VOLUME' });
});

test('decideClaim: a size or block size mismatch is refused with BM_ERR_VOLUME_MISMATCH and its details', () => {
  assert.throws(() => decideClaim(hello(), [offer('v', OLD, { size: 2 * MiB })], views(view('v')), 'refuse'), (e: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(e.code, 'BM_ERR_VOLUME_MISMATCH');
    assert.equal(e.details?.primarySize, 2 * MiB);
    assert.equal(e.details?.targetSize, MiB);
    return true;
  });
  assert.throws(() => decideClaim(hello(), [offer('v', OLD, { blockSize: 4096 })], views(view('v')), 'refuse'), { code: 'BM_ERR_VOLUME_MISMATCH' });
});

test('decideClaim: a volume held by another node with open connections is busy; by the same node (a restart) it is not', () => {
  const held = view('v', { owner: { node: 'p0', session: 's0' }, connections: 2 });
  assert.throws(() => decideClaim(hello('p1', 's1'), [offer('v', OLD)], views(held), 'refuse'), { code: 'BM_ERR_VOLUME_BUSY' });
  // same node, new session: a restart of that primary takes it over
  assert.equal(decideClaim(hello('p0', 's9'), [offer('v', OLD)], views(held), 'refuse').length, 1);
  // another node, but no connection left: free
  assert.equal(decideClaim(hello('p1', 's1'), [offer('v', OLD)], views(view('v', { owner: { node: 'p0', session: 's0' }, connections: 0 })), 'refuse').length, 1);
  // a cycle source holds it
  assert.throws(() => decideClaim(hello(), [offer('v', OLD)], views(view('v', { cycleSource: 'cyc' })), 'refuse'), { code: 'BM_ERR_VOLUME_BUSY' });
});

test('decideClaim: a blank target adopts the primary generation (history included), starts the offered stream and is inconsistent until the initial sync ends', () => {
  const [d] = decideClaim(hello(), [offer('v', MID, { history: [OLD] })], views(view('v')), 'refuse');
  assert.deepEqual(d, { name: 'v', lineage: 'blank', adopt: { current: MID, history: [OLD] }, disk: 'inconsistent', newStream: true, full: false, resolved: false, handedOver: false });
});

test('decideClaim: a blank target of a primary that declares the images identical (clean, --assume-clean) is up-to-date at once', () => {
  const [d] = decideClaim(hello(), [offer('v', MID, { clean: 1 })], views(view('v')), 'refuse');
  assert.equal(d!.lineage, 'blank');
  assert.equal(d!.disk, 'up-to-date');
  assert.equal(d!.full, false);
  // `clean` means nothing to a target that holds the primary's lineage: its disk state stays
  const [same] = decideClaim(hello(), [offer('v', MID, { clean: 1 })], views(view('v', { generations: { current: MID, history: [] }, disk: 'inconsistent' })), 'refuse');
  assert.equal(same!.disk, 'inconsistent');
});

test('decideClaim: same generation and same stream changes nothing; a new stream starts over without a full resync', () => {
  const gens: GenerationState = { current: MID, history: [OLD] };
  const same = decideClaim(hello(), [offer('v', MID, { history: [OLD], stream: 'bbbbbbbbbbbbbbbb' })], views(view('v', { generations: gens, stream: 'bbbbbbbbbbbbbbbb' })), 'refuse');
  assert.deepEqual(same, [{ name: 'v', lineage: 'same', adopt: undefined, disk: 'unknown', newStream: false, full: false, resolved: false, handedOver: false }]);
  const other = decideClaim(hello(), [offer('v', MID, { history: [OLD], stream: 'cccccccccccccccc' })], views(view('v', { generations: gens, stream: 'bbbbbbbbbbbbbbbb', disk: 'up-to-date' })), 'refuse');
  assert.deepEqual(other, [{ name: 'v', lineage: 'same', adopt: undefined, disk: 'up-to-date', newStream: true, full: false, resolved: false, handedOver: false }]);
});

test('decideClaim: the same lineage keeps the target\'s disk state: a sync that was interrupted leaves it inconsistent (the primary resumes it)', () => {
  const gens: GenerationState = { current: MID, history: [OLD] };
  for (const disk of ['inconsistent', 'outdated', 'up-to-date'] as const) {
    const [d] = decideClaim(hello(), [offer('v', MID, { history: [OLD] })], views(view('v', { generations: gens, disk })), 'refuse');
    assert.equal(d!.disk, disk, disk);
    assert.equal(d!.adopt, undefined, 'nothing to store');
  }
});

test('decideClaim: a target behind the primary (its generation is in the primary history) adopts the new one, no full resync', () => {
  const [d] = decideClaim(hello(), [offer('v', NEW, { history: [MID, OLD] })], views(view('v', { generations: { current: MID, history: [OLD] }, stream: 'aaaaaaaaaaaaaaaa' })), 'refuse');
  assert.equal(d!.lineage, 'target-behind');
  assert.deepEqual(d!.adopt, { current: NEW, history: [MID, OLD] });
  assert.equal(d!.full, false);
  assert.equal(d!.newStream, false);
  assert.equal(d!.disk, 'outdated', 'a consistent image the primary had: behind');
  // a target behind whose sync was interrupted stays inconsistent
  const [i] = decideClaim(hello(), [offer('v', NEW, { history: [MID, OLD] })], views(view('v', { generations: { current: MID, history: [OLD] }, disk: 'inconsistent' })), 'refuse');
  assert.equal(i!.disk, 'inconsistent');
});

test('decideClaim: split brain is refused with BM_ERR_SPLIT_BRAIN under refuse', () => {
  const target = view('v', { generations: { current: MID, history: [OLD] }, stream: 'bbbbbbbbbbbbbbbb' });
  assert.throws(() => decideClaim(hello(), [offer('v', NEW, { history: [OLD] })], views(target), 'refuse'), (e: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(e.code, 'BM_ERR_SPLIT_BRAIN');
    assert.equal(e.details?.lineage, 'split-brain');
    assert.equal(e.details?.unrelated, false, 'both grew out of OLD');
    assert.match(e.message, /both sides wrote while apart/);
    assert.equal(e.details?.volume, 'v');
    return true;
  });
  // a target ahead of the primary (it was written since it had our data) is refused too
  assert.throws(() => decideClaim(hello(), [offer('v', OLD)], views(target), 'refuse'), (e: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(e.code, 'BM_ERR_SPLIT_BRAIN');
    assert.equal(e.details?.lineage, 'target-ahead');
    return true;
  });
});

test('decideClaim: a target that served another primary\'s lineage refuses a primary it cannot prove a descendant (no generation in common): unrelated, nothing overwritten', () => {
  // primary A's data on the target (even an up-to-date copy, even after a restart of the target)
  const A = newGenerationId(1_500_000);
  const served = view('v', { generations: { current: A, history: [OLD] }, disk: 'up-to-date', stream: 'bbbbbbbbbbbbbbbb' });
  // primary B: another lineage entirely (its own blank start, or a primary that lost its state)
  assert.throws(() => decideClaim(hello('b', 'sb'), [offer('v', NEW, { history: [MID] })], views(served), 'refuse'), (e: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(e.code, 'BM_ERR_SPLIT_BRAIN');
    assert.equal(e.details?.lineage, 'split-brain');
    assert.equal(e.details?.unrelated, true);
    assert.match(e.message, /another lineage/);
    assert.match(e.message, /nothing was overwritten/);
    return true;
  });
  // nor does the clean flag of a primary that declares its image identical change that
  assert.throws(() => decideClaim(hello('b', 'sb'), [offer('v', NEW, { clean: 1 })], views(served), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
  // an inconsistent target (A's sync interrupted) is no exception: it holds A's lineage
  assert.throws(() => decideClaim(hello('b', 'sb'), [offer('v', NEW)], views(view('v', { generations: { current: A, history: [] }, disk: 'inconsistent' })), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
});

test('decideClaim: split brain under discard-target: the primary wins, the target adopts its generation, is inconsistent, and a full resync is owed', () => {
  const target = view('v', { generations: { current: MID, history: [OLD] }, disk: 'up-to-date', stream: 'bbbbbbbbbbbbbbbb' });
  const [d] = decideClaim(hello(), [offer('v', NEW, { history: [OLD] })], views(target), 'discard-target');
  // a mirror's image (never a primary's, no failback bitmap): no failback to explain
  assert.deepEqual(d, { name: 'v', lineage: 'split-brain', adopt: { current: NEW, history: [OLD] }, disk: 'inconsistent', newStream: true, full: true, resolved: false, handedOver: false });
});

test('decideClaim: split brain under discard-younger: a younger target is discarded, a younger primary is refused', () => {
  // the target's generation (NEW) is younger than the primary's (MID): the target loses
  const youngTarget = view('v', { generations: { current: NEW, history: [OLD] } });
  const [d] = decideClaim(hello(), [offer('v', MID, { history: [OLD] })], views(youngTarget), 'discard-younger');
  assert.equal(d!.full, true);
  assert.equal(d!.lineage, 'split-brain');
  // the primary is the younger side: refused, nothing overwritten
  const oldTarget = view('v', { generations: { current: MID, history: [OLD] } });
  assert.throws(() => decideClaim(hello(), [offer('v', NEW, { history: [OLD] })], views(oldTarget), 'discard-younger'), { code: 'BM_ERR_SPLIT_BRAIN' });
});

test('decideClaim: a cycle image on a volume without primary generations is refused unless discard-target', () => {
  const cyc = view('v', { cycleImage: { lineage: 'lin', freeze: 3 } });
  assert.throws(() => decideClaim(hello(), [offer('v', MID)], views(cyc), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
  const [d] = decideClaim(hello(), [offer('v', MID)], views(cyc), 'discard-target');
  assert.equal(d!.lineage, 'blank');
  // the freeze image is discarded: the whole volume is owed, whatever the primary declares
  const [c] = decideClaim(hello(), [offer('v', MID, { clean: 1 })], views(cyc), 'discard-target');
  assert.deepEqual([c!.full, c!.disk], [true, 'inconsistent']);
});

test('decideClaim: a refusal for the second of two volumes returns no decision at all (the first stays undecided, nothing to mutate)', () => {
  const a = view('a', { generations: { current: MID, history: [] }, stream: 'bbbbbbbbbbbbbbbb', owner: { node: 'p1', session: 's0' }, connections: 0 });
  const b = view('b', { generations: { current: MID, history: [OLD] }, stream: 'bbbbbbbbbbbbbbbb' });
  const before = JSON.stringify([a, b]);
  let result: unknown = 'not set';
  assert.throws(() => {
    // `a` alone would be accepted (blank-ish: a new generation in its history), `b` is split brain
    result = decideClaim(hello(), [offer('a', NEW, { history: [MID] }), offer('b', NEW, { history: [OLD] })], views(a, b), 'refuse');
  }, { code: 'BM_ERR_SPLIT_BRAIN' });
  assert.equal(result, 'not set', 'no partial list of decisions escapes');
  assert.equal(JSON.stringify([a, b]), before, 'the views are untouched (they are frozen: a write would have thrown)');
  // the same `a` alone is accepted: the refusal above came from `b` only
  assert.equal(decideClaim(hello(), [offer('a', NEW, { history: [MID] })], views(view('a', { generations: { current: MID, history: [] } })), 'refuse').length, 1);
});

test('decideClaim: a volume offered twice is a protocol error', () => {
  assert.throws(() => decideClaim(hello(), [offer('v', OLD), offer('v', OLD)], views(view('v')), 'refuse'), { code: 'BM_ERR_PROTOCOL' });
});

test('decideClaim: an owed discard-local decision (resolve on the target) accepts a split brain or another lineage like discard-target, once', () => {
  const target = view('v', { generations: { current: MID, history: [OLD] }, disk: 'up-to-date', stream: 'bbbbbbbbbbbbbbbb' });
  // without the decision: refused
  assert.throws(() => decideClaim(hello(), [offer('v', NEW, { history: [OLD] })], views(target), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
  const [d] = decideClaim(hello(), [offer('v', NEW, { history: [OLD] })], views({ ...target, discardLocal: true }), 'refuse');
  assert.deepEqual([d!.full, d!.disk, d!.resolved, d!.adopt?.current], [true, 'inconsistent', true, NEW]);
  // unrelated lineage too
  const [u] = decideClaim(hello(), [offer('v', NEW)], views({ ...target, discardLocal: true }), 'refuse');
  assert.deepEqual([u!.full, u!.disk], [true, 'inconsistent']);
});

test('decideClaim: a primary that resolved with discard-remote (offer discard) is accepted by a diverged target, which is resynced', () => {
  const target = view('v', { generations: { current: MID, history: [OLD] }, disk: 'up-to-date' });
  const [d] = decideClaim(hello(), [offer('v', NEW, { history: [OLD], discard: 1 })], views(target), 'refuse');
  assert.deepEqual([d!.full, d!.disk, d!.lineage], [true, 'inconsistent', 'split-brain']);
  // target ahead (promoted): the operator's decision overrides the fence too
  const ahead = view('v', { generations: { current: NEW, history: [MID] }, disk: 'up-to-date' });
  assert.throws(() => decideClaim(hello(), [offer('v', MID)], views(ahead), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
  assert.equal(decideClaim(hello(), [offer('v', MID, { discard: 1 })], views(ahead), 'refuse')[0]!.full, true);
});

test('decideClaim: a promoted volume refuses every primary (even under discard-target); an image a primary served is inconsistent when a primary of its lineage claims it', () => {
  const promoted = view('v', { generations: { current: NEW, history: [MID] }, disk: 'up-to-date', promoted: true });
  assert.throws(() => decideClaim(hello(), [offer('v', MID, { discard: 1 })], views(promoted), 'discard-target'), { code: 'BM_ERR_SPLIT_BRAIN' });
  // failback: the old primary's image (role primary, generation MID) claimed by the promoted node (NEW, history MID)
  const old = view('v', { generations: { current: MID, history: [] }, disk: 'up-to-date', wasPrimary: true });
  const [d] = decideClaim(hello(), [offer('v', NEW, { history: [MID] })], views(old), 'refuse');
  assert.deepEqual([d!.lineage, d!.disk, d!.full], ['target-behind', 'inconsistent', false]);
  // demoted cleanly (role target): only outdated, the journal/bitmap resync sends what changed
  const demoted = view('v', { generations: { current: MID, history: [] }, disk: 'up-to-date' });
  assert.equal(decideClaim(hello(), [offer('v', NEW, { history: [MID] })], views(demoted), 'refuse')[0]!.disk, 'outdated');
});

test('decideClaim: a hand-over stays recorded only while the demoted primary (offer ho) claims the same generation', () => {
  const handed = view('v', { generations: { current: MID, history: [] }, disk: 'up-to-date', handedOver: true });
  assert.equal(decideClaim(hello(), [offer('v', MID, { ho: 1 })], views(handed), 'refuse')[0]!.handedOver, true);
  assert.equal(decideClaim(hello(), [offer('v', MID)], views(handed), 'refuse')[0]!.handedOver, false);
});

// SPEC 22 / issue 12 (5): failback with the old primary's write-intent bitmap
const FB = { generation: MID, peer: 'p1', ranges: [65536, 131072], regions: 2, owed: false };

test('SPEC 22, issue 12 (5): decideClaim: a former primary with a bitmap of its current generation, kept against the claiming node whose lineage holds that generation, offers it (bitmap union, no checksum)', () => {
  const old = view('v', { generations: { current: MID, history: [OLD] }, disk: 'up-to-date', wasPrimary: true, failback: FB });
  const [d] = decideClaim(hello('p1'), [offer('v', NEW, { history: [MID, OLD] })], views(old), 'refuse');
  assert.deepEqual([d!.lineage, d!.disk, d!.full], ['target-behind', 'inconsistent', false]);
  assert.deepEqual(d!.failback?.ranges, [65536, 131072]);
  assert.equal(d!.checksumReason, undefined);
});

test('SPEC 22, issue 12 (5): decideClaim: a bitmap of another generation, kept against another node, without shared lineage, or none at all: no offer, the checksum resync stays (and says why)', () => {
  const base = { generations: { current: MID, history: [OLD] }, disk: 'up-to-date' as const, wasPrimary: true };
  const claim = (v: ClaimView, node = 'p1', o = offer('v', NEW, { history: [MID, OLD] })) => decideClaim(hello(node), [o], views(v), 'refuse')[0]!;
  // another generation (the bitmap is older than the image's lineage)
  const other = claim(view('v', { ...base, failback: { ...FB, generation: OLD } }));
  assert.deepEqual([other.disk, other.failback, typeof other.checksumReason], ['inconsistent', undefined, 'string']);
  assert.match(other.checksumReason!, /generation/);
  // kept against another mirror
  const elsewhere = claim(view('v', { ...base, failback: FB }), 'p2');
  assert.equal(elsewhere.failback, undefined);
  assert.match(elsewhere.checksumReason!, /node/);
  // none
  const none = claim(view('v', base));
  assert.deepEqual([none.disk, none.failback], ['inconsistent', undefined]);
  assert.match(none.checksumReason!, /no usable/);
  // a demoted image (role target) needs neither
  const demoted = claim(view('v', { ...base, wasPrimary: false, failback: FB }));
  assert.deepEqual([demoted.disk, demoted.failback, demoted.checksumReason], ['outdated', undefined, undefined]);
});

test('SPEC 22, issue 12 (5): decideClaim: an owed failback (recorded by an earlier claim whose READY may have been lost) is offered again while the image is inconsistent; a split brain resolved with discard-local uses the bitmap when the lineages share a generation; a refusal carries no decision', () => {
  // owed: the image adopted the primary's generation in an earlier claim
  const owedView = view('v', { generations: { current: NEW, history: [MID, OLD] }, disk: 'inconsistent', failback: { ...FB, owed: true } });
  const [again] = decideClaim(hello('p1'), [offer('v', NEW, { history: [MID, OLD] })], views(owedView), 'refuse');
  assert.deepEqual([again!.lineage, again!.disk, again!.failback?.regions], ['same', 'inconsistent', 2]);
  // owed, but another node claims: nothing offered, and no checksum is forced by the bitmap alone
  const [stranger] = decideClaim(hello('p2'), [offer('v', NEW, { history: [MID, OLD] })], views(owedView), 'refuse');
  assert.deepEqual([stranger!.failback, stranger!.checksumReason, stranger!.disk], [undefined, undefined, 'inconsistent']);
  // split brain: the old primary wrote apart (generation SPLIT, history MID); refused unless resolved
  const SPLIT = newGenerationId(4_000_000);
  const apart = view('v', { generations: { current: SPLIT, history: [MID, OLD] }, disk: 'up-to-date', wasPrimary: true, failback: { ...FB, generation: SPLIT } });
  assert.throws(() => decideClaim(hello('p1'), [offer('v', NEW, { history: [MID, OLD] })], views(apart), 'refuse'), { code: 'BM_ERR_SPLIT_BRAIN' });
  const [resolved] = decideClaim(hello('p1'), [offer('v', NEW, { history: [MID, OLD] })], views({ ...apart, discardLocal: true }), 'refuse');
  assert.deepEqual([resolved!.full, resolved!.disk, resolved!.failback?.generation], [true, 'inconsistent', SPLIT]);
  // another lineage altogether (no generation in common): discarded whole, by checksum
  const [unrelated] = decideClaim(hello('p1'), [offer('v', newGenerationId(5_000_000))], views({ ...apart, discardLocal: true }), 'refuse');
  assert.deepEqual([unrelated!.full, unrelated!.failback], [true, undefined]);
  assert.match(unrelated!.checksumReason!, /no generation in common/);
});
