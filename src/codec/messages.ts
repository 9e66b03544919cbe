/**
 * Message headers of the blockmirror protocol and their validation. The codec
 * (`encoder.ts` / `decoder.ts`) moves frames; this file says what a valid
 * header of each message type looks like. Anything a peer sends is checked here
 * before it is used: a bad header is `BM_ERR_BAD_HEADER`.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { MessageType } from './frame.js';
import { isDiskState, type DiskState } from '../replication/pair-state.js';
import type { Lineage } from '../replication/generation.js';

const LINEAGES: readonly string[] = ['same', 'target-behind', 'target-ahead', 'split-brain', 'blank'];

/** Lowest and highest protocol versions this build speaks. */
export const PROTOCOL_MIN = 1;
export const PROTOCOL_MAX = 1;

/** A volume as offered in the handshake. */
export interface VolumeOffer {
  name: string;
  size: number;
  blockSize: number;
  /** Current generation id of the volume (see `generation.ts`). */
  generation: string;
  /** Earlier generation ids, most recent first (absent: none). */
  history?: string[];
  /**
   * Id of the replication stream whose sequence numbers the requests carry. It
   * survives a restart of the primary when unacknowledged requests were
   * recovered from its journal; otherwise it is new per run.
   */
  stream: string;
  /** Every seq ≤ base of this stream was acknowledged by a target before (the target may consider them applied). */
  base: number;
  /**
   * 1: the primary declares the target's image identical to its own when the
   * target holds none of its lineage (`initialSync: 'none'`, `--assume-clean`):
   * a blank target then counts as up-to-date at once instead of awaiting an
   * initial sync.
   */
  clean?: 1;
  /**
   * 1: the operator resolved a split brain on the primary by discarding the
   * target's data (`resolve --discard-remote`): a target that would refuse
   * the volume for its lineage accepts it, drops its own data and is resynced
   * (by checksum) from the primary.
   */
  discard?: 1;
  /** 1: the primary demoted the volume (it is read-only there): a hand-over the target recorded stays valid. */
  ho?: 1;
}

/** HELLO (client → server): opens the handshake of one connection. */
export interface HelloHeader {
  /** Supported protocol range [min, max]. */
  protocol: [number, number];
  /** Node id of the sender. */
  node: string;
  /** Session id: all n connections of one primary run share it. */
  session: string;
  /** Slot index of this connection in the sender's connection array. */
  slot: number;
  /** Number of slots in the sender's connection array. */
  slots: number;
  features: string[];
  /** 32 random bytes. */
  nonce: Uint8Array;
  /** UDP port of the sender's heartbeat socket (absent: no heartbeats). */
  hb?: number;
  /**
   * With `hb`: the sender's heartbeat interval in ms. The primary's heartbeat
   * settings govern the session: the target sends at this interval and judges
   * the primary's heartbeats by `hbs` (or refuses with `BM_ERR_SETTINGS_MISMATCH`).
   */
  hbi?: number;
  /** With `hb`: the sender's stale time in ms (no heartbeat for longer: the link is down); greater than `hbi`. */
  hbs?: number;
}

/** CHALLENGE (server → client). */
export interface ChallengeHeader {
  protocol: number;
  node: string;
  features: string[];
  nonce: Uint8Array;
  /** HMAC proof of the server, present when the server has a secret. */
  proof?: Uint8Array;
}

/** AUTH (client → server): the client's proof and the volumes it mirrors. */
export interface AuthHeader {
  proof?: Uint8Array;
  volumes: VolumeOffer[];
}

/** Per-volume answer in READY. */
export interface ReadyVolume {
  name: string;
  /** Highest sequence number the server has applied contiguously for this session (0 if new). */
  applied: number;
  /** The target discarded its own divergent data (split-brain policy): the primary must resync the whole volume. */
  full?: boolean;
  /**
   * Id of the target's ordering state for the stream. When it differs from
   * the one a primary saw before, the target lost its volatile state (it
   * restarted): everything above `applied` must be sent again.
   */
  inc?: string;
  /** Every seq ≤ durable of the stream is on the target's stable storage. */
  durable?: number;
  /** Lineage of the target's data relative to the primary's, as the target decided it (`blank`: first pairing). */
  lineage?: Lineage;
  /** Disk state of the target's image once claimed (`inconsistent`: a sync is owed or was interrupted). */
  disk?: DiskState;
  /**
   * Failback: the image was a primary's (or is the target of an owed
   * failback) and its write-intent bitmap says where it may differ from the
   * primary's lineage — byte ranges `[offset, length, offset, length, …]`,
   * sorted, disjoint, within the volume, at most {@link MAX_FAILBACK_RANGES}
   * pairs in one READY (the target coarsens a larger bitmap into a
   * superset). The primary resyncs these (mapped onto its own regions) plus
   * what it changed itself, instead of comparing the whole volume. Absent:
   * no bitmap; a primary that does not know the field compares by checksum.
   */
  fb?: number[];
}

/** Most `[offset, length]` pairs of failback ranges in one READY, over all its volumes (≤ 2048 numbers: well within the 64 KiB header). */
export const MAX_FAILBACK_RANGES = 1024;

/** READY (server → client): the connection carries requests from now on. */
export interface ReadyHeader {
  volumes: ReadyVolume[];
  /** The heartbeat interval (ms) the server uses towards this client: the HELLO's `hbi` it agreed to (absent: it sends no heartbeats). */
  hbi?: number;
  /** The stale time (ms) the server judges this client's heartbeats by: the HELLO's `hbs`. */
  hbs?: number;
}

/** Largest heartbeat interval or stale time carried in a handshake, ms (2^31 − 1, the longest Node timer). */
export const MAX_HEARTBEAT_MS = 2 ** 31 - 1;

function heartbeatMs(v: unknown): boolean {
  return uint(v) && v >= 1 && v <= MAX_HEARTBEAT_MS;
}

/** ERROR (either way): a coded failure; `id` when it answers a request. */
export interface ErrorHeader {
  code: string;
  message: string;
  id?: number;
  /** The volume the error is about, when it is about one. */
  volume?: string;
}

/** WRITE (client → server); payload = data. FrameFlag.FUA asks for durability before the ack. */
export interface WriteHeader {
  /** Request id, unique per connection. */
  id: number;
  /** Volume index (position in the AUTH volume list). */
  vol: number;
  /** Byte offset in the volume. */
  off: number;
  /** Per-volume sequence number (order of the primary). */
  seq: number;
  /** Every write of this volume with a sequence number ≤ `bar` must be applied before this one. */
  bar: number;
  /**
   * 1: a resync write (initial sync or bitmap resync). The target records its
   * image as `inconsistent` before it applies the first one, until a FLUSH
   * with `disk: 'up-to-date'` ordered after the resync says otherwise.
   */
  rs?: 1;
  /** With `rs`: bytes done and in total of the running sync (shown in the target's status). */
  sync?: [number, number];
}

/** ZERO (client → server): the range reads as zeroes afterwards; ordered like a write. */
export interface ZeroHeader extends WriteHeader {
  /** Length of the range in bytes. */
  len: number;
}

/** HASH (client → server): digest of `[off, off + len)` once every seq ≤ `bar` is applied. */
export interface HashHeader {
  id: number;
  vol: number;
  off: number;
  len: number;
  bar: number;
  /** Hash algorithm: `sha256`, `sha1` or `md5`. */
  alg: string;
}

/** HASH_ACK (server → client): the digest, or a coded failure. */
export interface HashAckHeader extends AckHeader {
  digest?: Uint8Array;
}

/**
 * SKIP (client → server): sequence numbers `[seq, end]` of the volume's stream
 * carry nothing (a restart of the primary left them unused, or their data
 * reaches the target by a resync). Ordered after every seq < `seq`;
 * acknowledged with WRITE_ACK.
 */
export interface SkipHeader {
  id: number;
  vol: number;
  seq: number;
  end: number;
  /** 1: their data reaches the target by a resync: its image is inconsistent from here on (as with a resync write). */
  rs?: 1;
}

/** FLUSH (client → server): make applied writes durable, once every seq ≤ `bar` is applied. */
export interface FlushHeader {
  id: number;
  vol: number;
  bar: number;
  /**
   * `up-to-date`: once every seq ≤ `bar` is applied and flushed, the target's
   * image equals the primary's as of `bar` (nothing is left to resync): the
   * target records its image as up-to-date — unless a resync write above
   * `bar` reached it meanwhile.
   */
  disk?: 'up-to-date';
  /** Progress of a running sync: bytes done and in total (shown in the target's status). */
  sync?: [number, number];
  /**
   * 1 (with `disk`): the primary hands the volume over (it was demoted: it
   * writes no more): once up-to-date, the target records that it may be
   * promoted without force.
   */
  ho?: 1;
}

/** WRITE_ACK / FLUSH_ACK (server → client). `code` absent = success. */
export interface AckHeader {
  id: number;
  code?: string;
  message?: string;
  /** FLUSH_ACK: every seq ≤ durable of the stream is on the target's stable storage. */
  durable?: number;
  /** FLUSH_ACK: disk state of the target's image after the flush. */
  disk?: DiskState;
}

function bad(type: number, what: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_BAD_HEADER', `invalid header for message type ${type}: ${what}`, {
    details: { type },
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function uint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function str(v: unknown, max = 1024): v is string {
  return typeof v === 'string' && v.length <= max;
}

function bytes(v: unknown, length: number): v is Uint8Array {
  return v instanceof Uint8Array && v.length === length;
}

function strings(v: unknown): v is string[] {
  return Array.isArray(v) && v.length <= 64 && v.every((s) => str(s, 64));
}

/** `[done, total]` of a sync's progress. */
function progressPair(v: unknown): v is [number, number] {
  return Array.isArray(v) && v.length === 2 && uint(v[0]) && uint(v[1]);
}

function header(type: number, h: unknown): Record<string, unknown> {
  if (!isRecord(h)) throw bad(type, 'not a map');
  return h;
}

/** Validates a HELLO header. */
export function parseHello(h: unknown): HelloHeader {
  const t = MessageType.HELLO;
  const r = header(t, h);
  const p = r.protocol;
  if (!Array.isArray(p) || p.length !== 2 || !uint(p[0]) || !uint(p[1]) || p[0] > p[1]) throw bad(t, 'protocol');
  if (!str(r.node, 256) || !str(r.session, 256)) throw bad(t, 'node/session');
  if (!uint(r.slots) || r.slots < 1 || r.slots > 1024 || !uint(r.slot) || r.slot >= r.slots) throw bad(t, 'slot');
  if (!strings(r.features)) throw bad(t, 'features');
  if (!bytes(r.nonce, 32)) throw bad(t, 'nonce');
  if (r.hb !== undefined && (!uint(r.hb) || r.hb < 1 || r.hb > 65535)) throw bad(t, 'hb');
  if ((r.hbi !== undefined || r.hbs !== undefined) && (r.hb === undefined || !heartbeatMs(r.hbi) || !heartbeatMs(r.hbs))) throw bad(t, 'hbi/hbs');
  return r as unknown as HelloHeader;
}

/** Validates a CHALLENGE header. */
export function parseChallenge(h: unknown): ChallengeHeader {
  const t = MessageType.CHALLENGE;
  const r = header(t, h);
  if (!uint(r.protocol)) throw bad(t, 'protocol');
  if (!str(r.node, 256)) throw bad(t, 'node');
  if (!strings(r.features)) throw bad(t, 'features');
  if (!bytes(r.nonce, 32)) throw bad(t, 'nonce');
  if (r.proof !== undefined && !bytes(r.proof, 32)) throw bad(t, 'proof');
  return r as unknown as ChallengeHeader;
}

/** Validates an AUTH header. */
export function parseAuth(h: unknown): AuthHeader {
  const t = MessageType.AUTH;
  const r = header(t, h);
  if (r.proof !== undefined && !bytes(r.proof, 32)) throw bad(t, 'proof');
  const v = r.volumes;
  if (!Array.isArray(v) || v.length > 4096) throw bad(t, 'volumes');
  for (const o of v) {
    if (
      !isRecord(o) ||
      !str(o.name, 255) ||
      o.name.length === 0 ||
      !uint(o.size) ||
      !uint(o.blockSize) ||
      !str(o.generation, 64) ||
      (o.history !== undefined && (!Array.isArray(o.history) || o.history.length > 64 || !o.history.every((g) => str(g, 64)))) ||
      !str(o.stream, 64) ||
      !uint(o.base) ||
      (o.clean !== undefined && o.clean !== 1) ||
      (o.discard !== undefined && o.discard !== 1) ||
      (o.ho !== undefined && o.ho !== 1)
    ) {
      throw bad(t, 'volume offer');
    }
  }
  return r as unknown as AuthHeader;
}

/** Validates a READY header. */
export function parseReady(h: unknown): ReadyHeader {
  const t = MessageType.READY;
  const r = header(t, h);
  const v = r.volumes;
  if (!Array.isArray(v) || v.length > 4096) throw bad(t, 'volumes');
  let fbPairs = 0;
  for (const o of v) {
    if (!isRecord(o) || !str(o.name, 255) || !uint(o.applied)) throw bad(t, 'volume');
    if ((o.inc !== undefined && !str(o.inc, 64)) || (o.durable !== undefined && !uint(o.durable))) throw bad(t, 'volume');
    if ((o.disk !== undefined && !isDiskState(o.disk)) || (o.lineage !== undefined && (typeof o.lineage !== 'string' || !LINEAGES.includes(o.lineage)))) throw bad(t, 'volume');
    if (o.fb !== undefined) {
      if (!Array.isArray(o.fb) || o.fb.length % 2 !== 0 || o.fb.length > 2 * MAX_FAILBACK_RANGES || !o.fb.every(uint)) throw bad(t, 'fb');
      fbPairs += o.fb.length / 2;
      // sorted, disjoint, non-empty ranges (the volume's bounds are checked by the primary)
      for (let k = 0; k < o.fb.length; k += 2) {
        if ((o.fb[k + 1] as number) === 0 || (k > 0 && (o.fb[k] as number) < (o.fb[k - 2] as number) + (o.fb[k - 1] as number))) throw bad(t, 'fb');
      }
    }
  }
  if (fbPairs > MAX_FAILBACK_RANGES) throw bad(t, 'fb');
  if ((r.hbi !== undefined || r.hbs !== undefined) && (!heartbeatMs(r.hbi) || !heartbeatMs(r.hbs))) throw bad(t, 'hbi/hbs');
  return r as unknown as ReadyHeader;
}

/** Validates an ERROR header. */
export function parseError(h: unknown): ErrorHeader {
  const t = MessageType.ERROR;
  const r = header(t, h);
  if (!str(r.code, 64) || !str(r.message, 4096)) throw bad(t, 'code/message');
  if (r.id !== undefined && !uint(r.id)) throw bad(t, 'id');
  if (r.volume !== undefined && !str(r.volume, 255)) throw bad(t, 'volume');
  return r as unknown as ErrorHeader;
}

/** Validates a WRITE header. */
export function parseWrite(h: unknown): WriteHeader {
  const t = MessageType.WRITE;
  const r = header(t, h);
  if (!uint(r.id) || !uint(r.vol) || !uint(r.off) || !uint(r.seq) || !uint(r.bar)) throw bad(t, 'fields');
  if (r.rs !== undefined && r.rs !== 1) throw bad(t, 'rs');
  if (r.sync !== undefined && !progressPair(r.sync)) throw bad(t, 'sync');
  return r as unknown as WriteHeader;
}

/** Validates a ZERO header. */
export function parseZero(h: unknown): ZeroHeader {
  const t = MessageType.ZERO;
  const r = header(t, h);
  if (!uint(r.id) || !uint(r.vol) || !uint(r.off) || !uint(r.seq) || !uint(r.bar) || !uint(r.len)) throw bad(t, 'fields');
  if (r.rs !== undefined && r.rs !== 1) throw bad(t, 'rs');
  if (r.sync !== undefined && !progressPair(r.sync)) throw bad(t, 'sync');
  return r as unknown as ZeroHeader;
}

/** Hash algorithms a target computes for HASH. */
export const HASH_ALGORITHMS: readonly string[] = ['sha256', 'sha1', 'md5'];

/** Validates a HASH header. */
export function parseHash(h: unknown): HashHeader {
  const t = MessageType.HASH;
  const r = header(t, h);
  if (!uint(r.id) || !uint(r.vol) || !uint(r.off) || !uint(r.len) || !uint(r.bar)) throw bad(t, 'fields');
  if (typeof r.alg !== 'string' || !HASH_ALGORITHMS.includes(r.alg)) throw bad(t, 'alg');
  return r as unknown as HashHeader;
}

/** Validates a HASH_ACK header. */
export function parseHashAck(h: unknown): HashAckHeader {
  const ack = parseAck(MessageType.HASH_ACK, h) as HashAckHeader;
  if (ack.code === undefined && !(ack.digest instanceof Uint8Array && ack.digest.length >= 16 && ack.digest.length <= 64)) {
    throw bad(MessageType.HASH_ACK, 'digest');
  }
  return ack;
}

/** Validates a SKIP header. */
export function parseSkip(h: unknown): SkipHeader {
  const t = MessageType.SKIP;
  const r = header(t, h);
  if (!uint(r.id) || !uint(r.vol) || !uint(r.seq) || !uint(r.end) || r.seq < 1 || r.end < r.seq) throw bad(t, 'fields');
  if (r.rs !== undefined && r.rs !== 1) throw bad(t, 'rs');
  return r as unknown as SkipHeader;
}

/** Validates a FLUSH header. */
export function parseFlush(h: unknown): FlushHeader {
  const t = MessageType.FLUSH;
  const r = header(t, h);
  if (!uint(r.id) || !uint(r.vol) || !uint(r.bar)) throw bad(t, 'fields');
  if (r.disk !== undefined && r.disk !== 'up-to-date') throw bad(t, 'disk');
  if (r.sync !== undefined && !progressPair(r.sync)) throw bad(t, 'sync');
  if (r.ho !== undefined && (r.ho !== 1 || r.disk !== 'up-to-date')) throw bad(t, 'ho');
  return r as unknown as FlushHeader;
}

/** Validates a WRITE_ACK or FLUSH_ACK header. */
export function parseAck(type: number, h: unknown): AckHeader {
  const r = header(type, h);
  if (!uint(r.id)) throw bad(type, 'id');
  if (r.code !== undefined && !str(r.code, 64)) throw bad(type, 'code');
  if (r.message !== undefined && !str(r.message, 4096)) throw bad(type, 'message');
  if (r.durable !== undefined && !uint(r.durable)) throw bad(type, 'durable');
  if (r.disk !== undefined && !isDiskState(r.disk)) throw bad(type, 'disk');
  return r as unknown as AckHeader;
}
