/**
 * Headers of the freeze/copy cycle messages (types 32–36 of `MessageType`)
 * and their validation. Payloads are raw bytes, never msgpack.
 *
 * One transfer brings a target from its current freeze to freeze `to`, for
 * every volume of a consistency group at once:
 * ```
 * source                                             target
 *   CYCLE_BEGIN  {id, to, vols: [{v, from, full, chunk, gran, tbl, n}]}  →
 *   CYCLE_TABLE  {id, v, off}        payload: freeze-table bytes          →  (per volume, before its data)
 *   CYCLE_DATA   {id, v, s, g, n[, z]} payload: n granules of slot s from g (none with z: they read as zeroes) →
 *   CYCLE_COMMIT {id, to}                                                  →
 *                                    ← CYCLE_ACK {id, to}   once merged and durable
 *                                    ← CYCLE_ACK {id, to, code, message, held?}  refused / failed
 * ```
 * `v` is the index of the volume in the handshake's volume list. A full copy
 * (`full: true`) sends no table: it stands for every granule, slot = chunk.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { MessageType } from '../codec/frame.js';

/** Per-volume part of CYCLE_BEGIN. */
export interface CycleVolumePlan {
  /** Volume index (position in the handshake's volume list). */
  v: number;
  /** Freeze the target must hold for this delta (ignored with `full`). */
  from: number;
  /** Full copy: every granule follows (no table). */
  full: boolean;
  /** Chunk size of the source's freeze tables. */
  chunk: number;
  /** Granularity of the source's dirty tracking. */
  gran: number;
  /** Bytes of freeze table that follow in CYCLE_TABLE frames (0 with `full`). */
  tbl: number;
  /** Granules that follow in CYCLE_DATA frames. */
  n: number;
}

/** CYCLE_BEGIN (source → target). */
export interface CycleBeginHeader {
  /** Transfer id, unique per connection. */
  id: number;
  /** Freeze number the target holds after this transfer. */
  to: number;
  vols: CycleVolumePlan[];
}

/** CYCLE_TABLE (source → target); payload = table bytes starting at `off`. */
export interface CycleTableHeader {
  id: number;
  v: number;
  /** Byte offset of this part in the volume's table. */
  off: number;
}

/** CYCLE_DATA (source → target); payload = `n` granules of slot `s` from granule `g` (clipped at the end of the volume). */
export interface CycleDataHeader {
  id: number;
  v: number;
  s: number;
  g: number;
  n: number;
  /** 1: the granules read as zeroes; the frame carries no payload (a zero run). */
  z?: 1;
}

/** CYCLE_COMMIT (source → target). */
export interface CycleCommitHeader {
  id: number;
  to: number;
}

/** CYCLE_ACK (target → source). `code` absent = committed. */
export interface CycleAckHeader {
  id: number;
  to: number;
  code?: string;
  message?: string;
  /** With a refusal: the freeze the target holds of each volume of the BEGIN (same order; 0: none of that lineage). */
  held?: number[];
}

/** Most volumes one transfer may carry. */
export const MAX_TRANSFER_VOLUMES = 4096;

function bad(type: number, what: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_BAD_HEADER', `invalid header for message type ${type}: ${what}`, { details: { type } });
}

function record(type: number, h: unknown): Record<string, unknown> {
  if (typeof h !== 'object' || h === null || Array.isArray(h) || h instanceof Uint8Array) throw bad(type, 'not a map');
  return h as Record<string, unknown>;
}

function uint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function str(v: unknown, max: number): v is string {
  return typeof v === 'string' && v.length <= max;
}

/** Validates a CYCLE_BEGIN header. */
export function parseCycleBegin(h: unknown): CycleBeginHeader {
  const t = MessageType.CYCLE_BEGIN;
  const r = record(t, h);
  if (!uint(r.id) || !uint(r.to) || r.to < 1) throw bad(t, 'id/to');
  const vols = r.vols;
  if (!Array.isArray(vols) || vols.length === 0 || vols.length > MAX_TRANSFER_VOLUMES) throw bad(t, 'vols');
  const seen = new Set<number>();
  for (const p of vols) {
    const o = record(t, p);
    if (!uint(o.v) || !uint(o.from) || typeof o.full !== 'boolean' || !uint(o.chunk) || !uint(o.gran) || !uint(o.tbl) || !uint(o.n)) {
      throw bad(t, 'volume plan');
    }
    if (!o.full && o.from >= (r.to as number)) throw bad(t, 'from must be below to');
    if (o.full && o.tbl !== 0) throw bad(t, 'a full copy has no table');
    if (seen.has(o.v)) throw bad(t, 'volume listed twice');
    seen.add(o.v);
  }
  return r as unknown as CycleBeginHeader;
}

/** Validates a CYCLE_TABLE header. */
export function parseCycleTable(h: unknown): CycleTableHeader {
  const t = MessageType.CYCLE_TABLE;
  const r = record(t, h);
  if (!uint(r.id) || !uint(r.v) || !uint(r.off)) throw bad(t, 'fields');
  return r as unknown as CycleTableHeader;
}

/** Validates a CYCLE_DATA header. */
export function parseCycleData(h: unknown): CycleDataHeader {
  const t = MessageType.CYCLE_DATA;
  const r = record(t, h);
  if (!uint(r.id) || !uint(r.v) || !uint(r.s) || !uint(r.g) || !uint(r.n) || r.n < 1) throw bad(t, 'fields');
  if (r.z !== undefined && r.z !== 1) throw bad(t, 'z');
  return r as unknown as CycleDataHeader;
}

/** Validates a CYCLE_COMMIT header. */
export function parseCycleCommit(h: unknown): CycleCommitHeader {
  const t = MessageType.CYCLE_COMMIT;
  const r = record(t, h);
  if (!uint(r.id) || !uint(r.to)) throw bad(t, 'fields');
  return r as unknown as CycleCommitHeader;
}

/** Validates a CYCLE_ACK header. */
export function parseCycleAck(h: unknown): CycleAckHeader {
  const t = MessageType.CYCLE_ACK;
  const r = record(t, h);
  if (!uint(r.id) || !uint(r.to)) throw bad(t, 'fields');
  if (r.code !== undefined && !str(r.code, 64)) throw bad(t, 'code');
  if (r.message !== undefined && !str(r.message, 4096)) throw bad(t, 'message');
  if (r.held !== undefined && (!Array.isArray(r.held) || r.held.length > MAX_TRANSFER_VOLUMES || !r.held.every(uint))) throw bad(t, 'held');
  return r as unknown as CycleAckHeader;
}
