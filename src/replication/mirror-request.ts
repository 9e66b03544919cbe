/**
 * A mirror request: one write, zero or flush of a volume on its way to the
 * target, kept until the target acknowledged it.
 *
 * @module
 */
import type { BlockMirrorError } from '../errors.js';

/** What happened to a request on the mirror, as far as a waiting caller is told. */
/** `reject`: fail the caller's write (suspend policy) instead of resolving it as `failed`. */
export type MirrorOutcome = { ok: true } | { ok: false; error: BlockMirrorError; reject?: boolean };

/** A request queued for, or in flight to, the target. */
export interface MirrorRequest {
  /**
   * `write`/`zero` change data (they carry a seq); `skip` carries seqs
   * `[seq, end]` that hold nothing (their data, if any, reaches the target by
   * a resync); `flush` and `hash` are probes ordered by `barrier` only.
   */
  kind: 'write' | 'zero' | 'skip' | 'flush' | 'hash';
  /** Per-volume sequence number (0 for flush, which is ordered by `barrier` only). */
  seq: number;
  /** Last seq the request covers (`seq` except for `skip`). */
  end: number;
  /**
   * - `queued`: waits in the send queue (or for a retry);
   * - `inflight`: sent on connection `slot`, not answered;
   * - `acked`: the target applied it (the volume forgets it once the target says it is durable).
   */
  state: 'queued' | 'inflight' | 'acked';
  /** Regions of the request count as not yet covered (see `PrimaryVolume`'s write-intent rules). */
  uncovered: boolean;
  /** The primary's own write of it is on stable storage (a local flush or FUA came after it). */
  localDurable: boolean;
  /** The primary's own write of it completed (durable or not). */
  localWritten: boolean;
  /** The journal holds it durably. */
  journalDurable: boolean;
  /** The target reported it durable. */
  targetDurable: boolean;
  /** Bytes of `data` counted in the primary's payload budget (0: none). */
  held: number;
  /** Its payload was dropped from RAM (over budget): it is read back from the journal before it is sent. */
  spilled: boolean;
  /**
   * Byte offset in the volume; -1 for a request known by its journal record
   * only (acknowledged by a target handshake while it was in the journal-only
   * backlog): its range comes back with its payload if it must be sent again.
   */
  offset: number;
  length: number;
  /** Data of a write; undefined for zero and flush. */
  data: Uint8Array | undefined;
  /** True once `data` is our own copy (the caller may reuse its buffer). */
  owned: boolean;
  /**
   * An async write whose `data` is still the caller's buffer, valid only
   * until its journal append completes (the caller waits for it): it is not
   * sent before; then it is copied if the payload budget has room, else it
   * is read back from the journal when its turn comes.
   */
  borrowed: boolean;
  fua: boolean;
  /** Every seq ≤ barrier must be applied on the target before this request. */
  barrier: number;
  /** Clock time the request was created (for the sync timeout and latency). */
  createdAt: number;
  /** Failed attempts so far. */
  attempts: number;
  /** Slot index while in flight, -1 otherwise. */
  slot: number;
  /** True once appended to the volume's journal (released when durable on the target). */
  journaled: boolean;
  /** It was in flight on a connection that closed: sent again ahead of the in-flight window. */
  resend: boolean;
  /** Set while a caller waits for this request (sync mode); cleared once told. */
  onDone: ((outcome: MirrorOutcome) => void) | undefined;
  /** A resync write: not journaled, nobody waits for it but the resync. */
  resync: boolean;
  /** A `skip` standing for writes whose data a resync brings instead (the target's image is inconsistent from it on). */
  owed?: boolean;
  /** Bytes this request holds of the volume's async lag budget (0 if none). */
  lag?: number;
  /** Hash algorithm of a `hash` request. */
  alg?: string;
  /** A `hash` probe: called when it is given up (the link went down), so that no resync waits for it under a range lock. */
  onFail?: ((error: BlockMirrorError) => void) | undefined;
  /** A `flush` that also declares the target's image up-to-date (nothing was left to resync when it was made). */
  upToDate?: boolean;
  /**
   * The caller's write this request is one part of (a write longer than a
   * frame). Set when a part turns into a skip before the whole write is
   * answered: the target then holds that part only after a resync.
   */
  split?: { partLost: boolean };
  /** With `upToDate`: the flush also hands the volume over (it was demoted). */
  handover?: boolean;
  /** Internal completion (resync writes, hash probes): called once the target acknowledged, with the digest for `hash`. */
  onAck?: ((digest: Buffer | undefined) => void) | undefined;
}
