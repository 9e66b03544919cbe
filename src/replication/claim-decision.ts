/**
 * The target's decision about a primary's handshake, as a pure function of
 * both sides' state: which offered volumes it may claim, whether the target
 * adopts the primary's generations, whether the volume's ordering state
 * starts over (a new stream), and whether the primary owes a full resync.
 * Nothing is changed while deciding; a refusal (thrown coded error) leaves
 * the target exactly as it was (DESIGN invariant 8: decide first, then mutate).
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import type { HelloHeader, VolumeOffer } from '../codec/messages.js';
import { compareGenerations, MAX_HISTORY, type GenerationState, type Lineage } from './generation.js';
import type { BitmapOwner, DiskState } from './pair-state.js';

/** What the decision needs to know about one hosted volume. */
export interface ClaimView {
  name: string;
  size: number;
  blockSize: number;
  /** The primary session that holds the volume, with its open connections. */
  owner: { node: string; session: string } | undefined;
  connections: number;
  /** Generations of the data the volume holds (undefined: blank). */
  generations: GenerationState | undefined;
  /** Disk state of the volume's image (`unknown`: never paired). */
  disk: DiskState;
  /** Stream of the volume's ordering state (undefined: none yet). */
  stream: string | undefined;
  /** Node of a cycle source that holds the volume, if any. */
  cycleSource: string | undefined;
  /** Freeze image the volume holds from a cycle source (undefined: none). */
  cycleImage: { lineage: string; freeze: number } | undefined;
  /** The operator resolved a split brain here by discarding this image (`resolve --discard-local`), not applied yet. */
  discardLocal?: boolean;
  /** The image was last served by a primary (its state says role `primary`): it may hold writes no other copy has. */
  wasPrimary?: boolean;
  /** The volume was promoted on this node: no primary may claim it any more. */
  promoted?: boolean;
  /** The volume's primary handed it over (demoted). */
  handedOver?: boolean;
  /**
   * A write-intent bitmap kept beside the volume's pairing state (see
   * `PairState.bitmapOf`), read when the target started: the byte ranges it
   * holds dirty, and whose it is. Undefined when there is none that can be
   * trusted (no state directory, no file, a torn or invalid file, no owner
   * recorded, a journal that also cleared its bits).
   */
  failback?: FailbackBitmap;
  /** Why there is no `failback` bitmap for an image that was a primary's (said with a checksum failback). */
  failbackMissing?: string;
}

/** See {@link ClaimView.failback}: whose bitmap it is ({@link BitmapOwner}), and what it holds. */
export interface FailbackBitmap extends BitmapOwner {
  /** Dirty byte ranges, `[offset, length, offset, length, …]`, sorted, disjoint, within the volume (possibly coarsened: a superset). */
  ranges: readonly number[];
  /** Regions the ranges cover, in the bitmap's own region size. */
  regions: number;
  /** Recorded by an earlier failback claim that this image is not up-to-date since (it is the target's now, not a primary's). */
  owed: boolean;
}

/** See `SplitBrainPolicy` in mirror-target.ts. */
export type ClaimPolicy = 'refuse' | 'discard-target' | 'discard-younger';

/** The decision for one offered volume. */
export interface ClaimDecision {
  name: string;
  /** Lineage of the target's data relative to the primary's. */
  lineage: Lineage;
  /** Generations the target stores for the volume (undefined: unchanged). */
  adopt: GenerationState | undefined;
  /**
   * Disk state of the target's image once claimed (stored with `adopt`):
   * `inconsistent` when the primary must (re)sync it first — a blank target
   * (first pairing: an initial sync follows; `up-to-date` instead when the
   * primary declares the images identical, `clean`), data of another lineage
   * discarded by the policy, or a sync that was interrupted; `outdated` when it is a consistent image
   * the primary had before (it wrote since); otherwise unchanged.
   */
  disk: DiskState;
  /** The volume's ordering state starts over for the offered stream. */
  newStream: boolean;
  /** The target's data is discarded: the primary resyncs the whole volume. */
  full: boolean;
  /** The operator's `discard-local` decision was applied (it is cleared with the claim). */
  resolved: boolean;
  /** The hand-over recorded for the volume stays valid (the claiming primary is the demoted one). */
  handedOver: boolean;
  /**
   * Failback with a bitmap: the image is a former primary's (or the target
   * of an owed failback) that may hold writes the claiming primary lacks,
   * and its write-intent bitmap says where: offered in READY (`fb`), so that
   * the primary resyncs those regions plus its own changes — not the whole
   * volume by checksum. The target records `bitmapOf` (owed) with the claim
   * and keeps the bitmap until its image is up-to-date again. Absent: no
   * bitmap is offered.
   */
  failback?: FailbackBitmap;
  /**
   * Why no bitmap was offered although the image may hold writes the
   * primary lacks (the primary then compares the whole volume by checksum);
   * absent when none was needed or one was offered.
   */
  checksumReason?: string;
}

/**
 * Decides about `offers` of a primary (`hello`) against the target's volumes
 * (`view(name)`; undefined for a volume it does not host).
 *
 * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_VOLUME_MISMATCH`,
 *   `BM_ERR_VOLUME_BUSY`, `BM_ERR_SPLIT_BRAIN` — and then nothing may change.
 */
export function decideClaim(hello: HelloHeader, offers: readonly VolumeOffer[], view: (name: string) => ClaimView | undefined, policy: ClaimPolicy): ClaimDecision[] {
  const decisions: ClaimDecision[] = [];
  const seen = new Set<string>();
  for (const offer of offers) {
    if (seen.has(offer.name)) throw new BlockMirrorError('BM_ERR_PROTOCOL', `volume ${offer.name} is offered twice`);
    seen.add(offer.name);
    const v = view(offer.name);
    if (v === undefined) throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `this target hosts no volume named ${JSON.stringify(offer.name)}`);
    if (v.size !== offer.size || v.blockSize !== offer.blockSize) {
      throw new BlockMirrorError(
        'BM_ERR_VOLUME_MISMATCH',
        `volume ${offer.name}: primary has ${offer.size} bytes / block ${offer.blockSize}, target has ${v.size} / ${v.blockSize}`,
        { details: { volume: offer.name, primarySize: offer.size, targetSize: v.size, primaryBlockSize: offer.blockSize, targetBlockSize: v.blockSize } },
      );
    }
    if (v.owner !== undefined && v.owner.session !== hello.session && v.connections > 0 && v.owner.node !== hello.node) {
      throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} is already mirrored from ${v.owner.node}`);
    }
    if (v.promoted === true) {
      // fenced by lineage: the promoted generation descends from the primary's, which is behind it now
      throw new BlockMirrorError(
        'BM_ERR_SPLIT_BRAIN',
        `volume ${offer.name} was promoted on this node (generation ${v.generations?.current ?? '-'}): the primary (generation ${offer.generation}) is no longer the volume's primary; nothing was overwritten`,
        { details: { volume: offer.name, lineage: 'target-ahead', promoted: true, primaryGeneration: offer.generation, targetGeneration: v.generations?.current } },
      );
    }
    if (v.cycleSource !== undefined) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} receives freeze/copy cycles from ${v.cycleSource}`);
    if (v.generations === undefined && v.cycleImage !== undefined && policy !== 'discard-target') {
      throw new BlockMirrorError(
        'BM_ERR_SPLIT_BRAIN',
        `volume ${offer.name} holds freeze ${v.cycleImage.freeze} of a cycle source, not data of primary generation ${offer.generation}; nothing was overwritten (splitBrain: 'discard-target' lets the primary resync it)`,
        { details: { volume: offer.name, primaryGeneration: offer.generation, policy } },
      );
    }
    const primary: GenerationState = { current: offer.generation, history: offer.history ?? [] };
    const lineage = compareGenerations(primary, v.generations);
    let full = false;
    if (lineage === 'target-ahead' || lineage === 'split-brain') {
      const targetYounger = v.generations!.current > offer.generation;
      // the operator's decision (on either side) applies where a policy would
      if (policy === 'discard-target' || (policy === 'discard-younger' && targetYounger) || v.discardLocal === true || offer.discard === 1) full = true;
      else {
        const unrelated = lineage === 'split-brain' && !sharesAncestry(primary, v.generations!);
        const why =
          lineage === 'target-ahead'
            ? "the target was written since it had the primary's data"
            : unrelated
              ? 'the target holds data of another lineage (no generation in common: another primary, or a primary that lost its state)'
              : 'both sides wrote while apart (split brain)';
        throw new BlockMirrorError(
          'BM_ERR_SPLIT_BRAIN',
          `volume ${offer.name}: ${why}: primary generation ${offer.generation}, target generation ${v.generations!.current}; nothing was overwritten`,
          { details: { volume: offer.name, lineage, unrelated, primaryGeneration: offer.generation, targetGeneration: v.generations!.current, policy } },
        );
      }
    }
    // a blank volume holding a cycle image (discard-target): that image is discarded too
    if (lineage === 'blank' && v.cycleImage !== undefined) full = true;
    const adopt = v.generations?.current === offer.generation ? undefined : { current: offer.generation, history: primary.history.slice(0, MAX_HISTORY) };
    // an image a primary served (not handed over) may hold writes the claiming primary lacks
    const formerPrimary = v.wasPrimary === true && (lineage === 'same' || lineage === 'target-behind');
    const owed = v.failback?.owed === true && v.disk === 'inconsistent' && (lineage === 'same' || lineage === 'target-behind');
    let failback: FailbackBitmap | undefined;
    let checksumReason: string | undefined;
    if (full || formerPrimary || owed) {
      const why = failbackRefusal(v, hello.node, primary, lineage, full);
      if (why === undefined) failback = v.failback;
      // (a discarded image that never was a primary's, without a bitmap, is no failback: nothing to explain)
      else if ((!owed || full || formerPrimary) && (v.wasPrimary === true || v.failback !== undefined)) checksumReason = why;
    }
    let disk: DiskState = v.disk;
    if (full) disk = 'inconsistent';
    else if (lineage === 'blank') disk = offer.clean === 1 ? 'up-to-date' : 'inconsistent';
    // ... a resync of its bitmap's regions, or a checksum resync that compares it all
    else if (formerPrimary || failback !== undefined) disk = 'inconsistent';
    else if (lineage === 'target-behind' && v.disk !== 'inconsistent') disk = 'outdated';
    decisions.push({
      name: offer.name,
      lineage,
      adopt,
      disk,
      newStream: v.stream !== offer.stream,
      full,
      resolved: v.discardLocal === true,
      handedOver: v.handedOver === true && offer.ho === 1 && lineage === 'same',
      ...(failback === undefined ? {} : { failback }),
      ...(checksumReason === undefined ? {} : { checksumReason }),
    });
  }
  return decisions;
}

/**
 * Why the target's write-intent bitmap cannot tell the claiming primary
 * where the image may differ (undefined: it can). It can when it was kept
 * against this very primary node (its acknowledgements alone cleared bits)
 * and either it belongs to the image's current generation, which descends
 * to the primary (the primary's lineage holds it; or, when the image's own
 * data is discarded, the two lineages share a generation: the bitmap also
 * covers what the image wrote apart, never acknowledged by that node), or
 * an earlier failback claim of this primary's lineage recorded it (owed).
 */
function failbackRefusal(v: ClaimView, node: string, primary: GenerationState, lineage: Lineage, discarded: boolean): string | undefined {
  const f = v.failback;
  if (f === undefined) return v.failbackMissing === undefined ? 'no usable write-intent bitmap on the target' : `no usable write-intent bitmap on the target: ${v.failbackMissing}`;
  if (f.peer !== node) return `the target's bitmap was kept against node ${f.peer}, not ${node}`;
  if (v.generations === undefined || !sharesAncestry(primary, v.generations)) return 'the lineages have no generation in common';
  if (f.owed) return undefined;
  if (f.generation !== v.generations.current) return `the target's bitmap belongs to generation ${f.generation}, not to its current ${v.generations.current}`;
  if (lineage === 'same' || lineage === 'target-behind' || discarded) return undefined;
  return 'the primary does not descend from the target\'s generation';
}

/** True when the two lineages have a generation in common (one grew out of the other at some point). */
function sharesAncestry(a: GenerationState, b: GenerationState): boolean {
  const mine = new Set([a.current, ...a.history]);
  return mine.has(b.current) || b.history.some((g) => mine.has(g));
}
