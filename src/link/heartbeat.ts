/**
 * The heartbeat datagram of seed 000 (SPEC 3): one frame of type
 * `MessageType.HEARTBEAT`, no payload, whose msgpack header is
 *
 * ```
 * { node, session, seq, time, status, mac? }
 * ```
 *
 * - `node`: node id of the sender; `session`: id of the sender's run (a
 *   restart uses a new one); both strings of 1..256 characters.
 * - `seq`: 1, 2, 3, … per sender session (a safe non-negative integer).
 * - `time`: the sender's clock at sending (finite number; its epoch is the
 *   sender's, so it is informational only and never compared with ours).
 * - `status`: the sender's view of the link (`up`/`down`/`probation`/`connecting`).
 * - `mac`: when a secret is set, HMAC-SHA256(secret, canonical bytes) over
 *   the other fields, see {@link heartbeatMacInput}.
 *
 * Receivers check, in this order: the frame (codec errors, type, no payload),
 * the header shape (`BM_ERR_BAD_HEADER`), the MAC when they have a secret
 * (`BM_ERR_AUTH_FAILED`, `details.reason: 'auth'`), the sender node
 * (`BM_ERR_PROTOCOL`, `details.reason: 'unexpected-node'`), then replay
 * (`BM_ERR_PROTOCOL`, `details.reason: 'replayed'`). A receiver that requires
 * authentication but has no key yet refuses every well-formed heartbeat
 * after the shape check (`BM_ERR_AUTH_FAILED`, `details.reason:
 * 'unauthenticated'`). Every error carries `details.reason`, one of
 * {@link HeartbeatRejectReason}.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { decodeFrame } from '../codec/decoder.js';
import { encodeFrame } from '../codec/encoder.js';
import { MessageType } from '../codec/frame.js';
import type { CodecLimits } from '../codec/frame.js';
import { BlockMirrorError, isBlockMirrorError } from '../errors.js';

/** The link status a heartbeat announces (the sender's link state). */
export type HeartbeatStatus = 'up' | 'down' | 'probation' | 'connecting';

/** Every {@link HeartbeatStatus}. */
export const HEARTBEAT_STATUSES: readonly HeartbeatStatus[] = Object.freeze(['up', 'down', 'probation', 'connecting']);

/** Length of the heartbeat MAC (HMAC-SHA256) in bytes. */
export const HEARTBEAT_MAC_LENGTH = 32;

/** Longest node id / session id accepted, in characters. */
export const HEARTBEAT_MAX_ID_LENGTH = 256;

/**
 * Codec limits used to decode heartbeat datagrams: a heartbeat header is a few
 * hundred bytes at most and there is no payload, so anything bigger is refused
 * before it is parsed.
 */
export const HEARTBEAT_CODEC_LIMITS: Readonly<CodecLimits> = Object.freeze({ maxHeaderLength: 2048, maxPayloadLength: 0 });

/**
 * Why a received heartbeat was rejected (the key of the rejection counters):
 * `malformed` (not a heartbeat), `auth` (missing or wrong MAC),
 * `unauthenticated` (authentication is required but the receiver has no key
 * yet, see {@link VerifyHeartbeatOptions.requireAuth}), `unexpected-node`,
 * `replayed`.
 */
export type HeartbeatRejectReason = 'malformed' | 'auth' | 'unauthenticated' | 'unexpected-node' | 'replayed';

/** Every {@link HeartbeatRejectReason}. */
export const HEARTBEAT_REJECT_REASONS: readonly HeartbeatRejectReason[] = Object.freeze(['malformed', 'auth', 'unauthenticated', 'unexpected-node', 'replayed']);

/** The fields a heartbeat carries (everything but the MAC). */
export interface HeartbeatFields {
  /** Node id of the sender. */
  node: string;
  /** Session id of the sender's run. */
  session: string;
  /** Sequence number, increasing per sender session. */
  seq: number;
  /** The sender's clock at sending (milliseconds, sender's epoch). */
  time: number;
  /** The sender's link state. */
  status: HeartbeatStatus;
}

/** A decoded heartbeat. */
export interface Heartbeat extends HeartbeatFields {
  /** The MAC, when the sender had a secret. */
  mac?: Uint8Array;
}

function malformed(what: string, cause?: unknown): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_BAD_HEADER', `invalid heartbeat: ${what}`, {
    details: { type: MessageType.HEARTBEAT, reason: 'malformed' },
    ...(cause === undefined ? {} : { cause }),
  });
}

function isId(v: unknown): v is string {
  return typeof v === 'string' && v.length >= 1 && v.length <= HEARTBEAT_MAX_ID_LENGTH;
}

function isStatus(v: unknown): v is HeartbeatStatus {
  return typeof v === 'string' && (HEARTBEAT_STATUSES as readonly string[]).includes(v);
}

function checkFields(f: Record<string, unknown>): void {
  if (!isId(f.node)) throw malformed('node must be a string of 1..256 characters');
  if (!isId(f.session)) throw malformed('session must be a string of 1..256 characters');
  if (typeof f.seq !== 'number' || !Number.isSafeInteger(f.seq) || f.seq < 0) throw malformed('seq must be a safe non-negative integer');
  if (typeof f.time !== 'number' || !Number.isFinite(f.time)) throw malformed('time must be a finite number');
  if (!isStatus(f.status)) throw malformed('status must be up, down, probation or connecting');
}

/**
 * Validates a decoded HEARTBEAT header (shape only: no MAC or replay check).
 *
 * @throws {@link BlockMirrorError} `BM_ERR_BAD_HEADER` (`details.reason: 'malformed'`).
 */
export function parseHeartbeat(header: unknown): Heartbeat {
  if (typeof header !== 'object' || header === null || Array.isArray(header) || header instanceof Uint8Array) {
    throw malformed('header is not a map');
  }
  const r = header as Record<string, unknown>;
  checkFields(r);
  if (r.mac !== undefined && !(r.mac instanceof Uint8Array && r.mac.length === HEARTBEAT_MAC_LENGTH)) {
    throw malformed(`mac must be ${HEARTBEAT_MAC_LENGTH} bytes`);
  }
  const hb: Heartbeat = {
    node: r.node as string,
    session: r.session as string,
    seq: r.seq as number,
    time: r.time as number,
    status: r.status as HeartbeatStatus,
  };
  if (r.mac !== undefined) hb.mac = r.mac as Uint8Array;
  return hb;
}

function putString(parts: Buffer[], s: string): void {
  const bytes = Buffer.from(s, 'utf8');
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(bytes.length, 0);
  parts.push(len, bytes);
}

/**
 * The canonical bytes the MAC covers: the ASCII label `bm-heartbeat\0`
 * (so a heartbeat MAC is never valid as a handshake proof or vice versa), then
 * node, session (each a 4-byte big-endian UTF-8 length and the bytes), seq
 * (8-byte big-endian unsigned integer), time (8-byte big-endian IEEE-754
 * double, -0 written as 0), status (length-prefixed like the ids).
 */
export function heartbeatMacInput(fields: HeartbeatFields): Buffer {
  const parts: Buffer[] = [Buffer.from('bm-heartbeat\0', 'latin1')];
  putString(parts, fields.node);
  putString(parts, fields.session);
  const nums = Buffer.allocUnsafe(16);
  nums.writeBigUInt64BE(BigInt(fields.seq), 0);
  // msgpack sends -0 as the integer 0: sign the value the receiver will see.
  nums.writeDoubleBE(fields.time === 0 ? 0 : fields.time, 8);
  parts.push(nums);
  putString(parts, fields.status);
  return Buffer.concat(parts);
}

/** HMAC-SHA256(secret, {@link heartbeatMacInput}(fields)). */
export function computeHeartbeatMac(secret: Uint8Array, fields: HeartbeatFields): Buffer {
  return createHmac('sha256', secret).update(heartbeatMacInput(fields)).digest();
}

/**
 * Encodes a heartbeat datagram. With `secret` (non-empty), the header carries
 * the MAC over the fields.
 *
 * @throws {@link BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when a field is invalid
 *   (same rules as {@link parseHeartbeat}) or `secret` is empty.
 */
export function encodeHeartbeat(fields: HeartbeatFields, secret?: Uint8Array): Buffer {
  try {
    checkFields(fields as unknown as Record<string, unknown>);
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', (error as Error).message, { details: { ...fields } });
  }
  if (secret !== undefined && secret.length === 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'heartbeat secret must not be empty');
  const header: Heartbeat = { node: fields.node, session: fields.session, seq: fields.seq, time: fields.time, status: fields.status };
  if (secret !== undefined) header.mac = computeHeartbeatMac(secret, fields);
  const chunks = encodeFrame(MessageType.HEARTBEAT, header, undefined, { payloadChecksum: false });
  return chunks[0] as Buffer;
}

/** Session id and sequence number of the last heartbeat accepted from a sender. */
export interface HeartbeatCursor {
  session: string;
  seq: number;
}

/** Options of {@link HeartbeatReplayGuard}. */
export interface HeartbeatReplayGuardOptions {
  /** Senders (node ids) remembered at most; the least recently accepted is forgotten first. Default 64. */
  maxNodes?: number;
  /** Superseded sessions remembered per node (and refused). Default 16. */
  maxRetiredSessions?: number;
}

interface NodeReplayState {
  session: string;
  seq: number;
  retired: string[];
}

/**
 * Replay and stale-sequence protection, per sender node and session:
 * - a heartbeat whose `seq` is ≤ the last accepted `seq` of the same node and
 *   session is refused (`replayed`): duplicates, reordered and replayed datagrams;
 * - a heartbeat with a new session id from the same node is a restart: it is
 *   accepted and the old session is *retired*;
 * - a heartbeat of a retired session is refused (`replayed`), so a recording of
 *   an earlier run cannot be replayed to fake liveness.
 *
 * Only authenticated heartbeats should be recorded (see {@link verifyHeartbeat}).
 */
export class HeartbeatReplayGuard {
  readonly #nodes = new Map<string, NodeReplayState>();
  readonly #maxNodes: number;
  readonly #maxRetired: number;

  constructor(options: HeartbeatReplayGuardOptions = {}) {
    this.#maxNodes = options.maxNodes ?? 64;
    this.#maxRetired = options.maxRetiredSessions ?? 16;
    if (!Number.isSafeInteger(this.#maxNodes) || this.#maxNodes < 1) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'maxNodes must be a positive integer', { details: { maxNodes: this.#maxNodes } });
    }
    if (!Number.isSafeInteger(this.#maxRetired) || this.#maxRetired < 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'maxRetiredSessions must be a non-negative integer', {
        details: { maxRetiredSessions: this.#maxRetired },
      });
    }
  }

  /** The last accepted session and seq of `node`, if any. */
  last(node: string): HeartbeatCursor | undefined {
    const s = this.#nodes.get(node);
    return s === undefined ? undefined : { session: s.session, seq: s.seq };
  }

  /**
   * Throws when `hb` is a replay (see the class notes).
   *
   * @throws {@link BlockMirrorError} `BM_ERR_PROTOCOL` with `details.reason: 'replayed'`.
   */
  check(hb: HeartbeatFields): void {
    const s = this.#nodes.get(hb.node);
    if (s === undefined) return;
    if (hb.session === s.session) {
      if (hb.seq <= s.seq) throw replayed(hb, s.seq);
    } else if (s.retired.includes(hb.session)) {
      throw replayed(hb, undefined);
    }
  }

  /** Records `hb` as accepted (call after {@link check} passed). */
  accept(hb: HeartbeatFields): void {
    const s = this.#nodes.get(hb.node);
    if (s === undefined) {
      if (this.#nodes.size >= this.#maxNodes) {
        const oldest = this.#nodes.keys().next().value as string;
        this.#nodes.delete(oldest);
      }
      this.#nodes.set(hb.node, { session: hb.session, seq: hb.seq, retired: [] });
      return;
    }
    // Re-insert: the map is ordered by last acceptance.
    this.#nodes.delete(hb.node);
    this.#nodes.set(hb.node, s);
    if (hb.session !== s.session) {
      if (this.#maxRetired > 0) {
        s.retired.push(s.session);
        if (s.retired.length > this.#maxRetired) s.retired.shift();
      }
      s.session = hb.session;
    }
    s.seq = hb.seq;
  }

  /** Forgets every sender. */
  clear(): void {
    this.#nodes.clear();
  }
}

function replayed(hb: HeartbeatFields, lastSeq: number | undefined): BlockMirrorError {
  const message =
    lastSeq === undefined
      ? `heartbeat of node ${hb.node} from a superseded session ${hb.session}`
      : `heartbeat of node ${hb.node} with seq ${hb.seq} not above the last accepted ${lastSeq}`;
  return new BlockMirrorError('BM_ERR_PROTOCOL', message, {
    details: { reason: 'replayed', node: hb.node, session: hb.session, seq: hb.seq, lastSeq },
  });
}

/** Options of {@link verifyHeartbeat}. */
export interface VerifyHeartbeatOptions {
  /** Shared secret: when set, a heartbeat without a valid MAC is refused. Without it, a MAC is ignored (unless `requireAuth`). */
  secret?: Uint8Array | undefined;
  /**
   * Refuse every heartbeat when no `secret` is given (`unauthenticated`): the
   * link requires authenticated heartbeats and the key is not known yet.
   */
  requireAuth?: boolean | undefined;
  /** Refuse heartbeats from any other node id. */
  expectedNode?: string | undefined;
  /** Refuse heartbeats from this node id (our own: a reflected heartbeat). */
  rejectNode?: string | undefined;
  /**
   * Simple replay check: refuse a heartbeat whose `seq` ≤ `lastSeq`, whatever its
   * session (for one sender whose session is known). Prefer `guard`.
   */
  lastSeq?: number | undefined;
  /** Per node+session replay protection; an accepted heartbeat is recorded in it. */
  guard?: HeartbeatReplayGuard | undefined;
}

/**
 * Decodes and checks one heartbeat datagram (see the module notes for the
 * order of the checks). On success, records it in `options.guard`.
 *
 * @throws {@link BlockMirrorError} with `details.reason` a {@link HeartbeatRejectReason}:
 *   codec codes (`BM_ERR_BAD_MAGIC`, `BM_ERR_BAD_CHECKSUM`, …), `BM_ERR_UNKNOWN_MESSAGE`
 *   for another frame type and `BM_ERR_BAD_HEADER` for a bad header → `malformed`;
 *   `BM_ERR_AUTH_FAILED` (missing or wrong MAC) → `auth`, (`requireAuth` without a secret) →
 *   `unauthenticated`; `BM_ERR_PROTOCOL` → `unexpected-node`
 *   or `replayed`.
 */
export function verifyHeartbeat(buf: Buffer, options: VerifyHeartbeatOptions = {}): Heartbeat {
  let hb: Heartbeat;
  try {
    const frame = decodeFrame(buf, { limits: HEARTBEAT_CODEC_LIMITS });
    if (frame === null || frame.type !== MessageType.HEARTBEAT) {
      throw new BlockMirrorError('BM_ERR_UNKNOWN_MESSAGE', `datagram is not a heartbeat (type ${frame === null ? 'unknown' : frame.type})`);
    }
    hb = parseHeartbeat(frame.header);
  } catch (error) {
    if (isBlockMirrorError(error)) {
      if (error.details.reason !== 'malformed') {
        throw new BlockMirrorError(error.code, error.message, { cause: error.cause, details: { ...error.details, codecReason: error.details.reason, reason: 'malformed' } });
      }
      throw error;
    }
    throw malformed(String(error), error);
  }

  const { secret } = options;
  if (secret === undefined && options.requireAuth === true) {
    throw new BlockMirrorError('BM_ERR_AUTH_FAILED', `heartbeat of node ${hb.node} refused: heartbeats must be authenticated and no key is known yet`, {
      details: { reason: 'unauthenticated', node: hb.node },
    });
  }
  if (secret !== undefined) {
    if (hb.mac === undefined) {
      throw new BlockMirrorError('BM_ERR_AUTH_FAILED', `heartbeat of node ${hb.node} carries no MAC but a secret is set`, {
        details: { reason: 'auth', node: hb.node, mac: 'missing' },
      });
    }
    const expected = computeHeartbeatMac(secret, hb);
    if (!timingSafeEqual(expected, hb.mac)) {
      throw new BlockMirrorError('BM_ERR_AUTH_FAILED', `heartbeat of node ${hb.node} carries a wrong MAC`, {
        details: { reason: 'auth', node: hb.node, mac: 'wrong' },
      });
    }
  }

  if ((options.expectedNode !== undefined && hb.node !== options.expectedNode) || (options.rejectNode !== undefined && hb.node === options.rejectNode)) {
    throw new BlockMirrorError('BM_ERR_PROTOCOL', `heartbeat from unexpected node ${hb.node}`, {
      details: { reason: 'unexpected-node', node: hb.node, expectedNode: options.expectedNode },
    });
  }

  if (options.lastSeq !== undefined && hb.seq <= options.lastSeq) throw replayed(hb, options.lastSeq);
  if (options.guard !== undefined) {
    options.guard.check(hb);
    options.guard.accept(hb);
  }
  return hb;
}
