/**
 * On-disk format of the {@link FileJournal} ring file: superblock slots and
 * record headers. All integers little-endian; 64-bit integers are stored as
 * two u32 (low word first) and must be safe JavaScript integers.
 *
 * File layout:
 * ```
 * [0, 512)         superblock slot 0
 * [4096, 4608)     superblock slot 1 (own 4 KiB page, so one torn write cannot hit both)
 * [8192, 8192+R)   the ring of R bytes (R = capacity, a multiple of 512)
 * ```
 *
 * Record header (48 bytes), followed by the payload, the record padded to a
 * multiple of 512 bytes in the ring (padding bytes are not written):
 * ```
 *  0 u32 magic 'BMJR'     4 u16 version      6 u16 flags (1 = FUA, 2 = wrap padding, 4 = zero range)
 *  8 u32 journal id      12 u32 epoch       16 u64 seq
 * 24 f64 timestamp       32 u64 volume offset
 * 40 u32 payload length  44 u32 CRC-32 of bytes 0..43 followed by the payload
 * ```
 *
 * Record kinds:
 * - write (no kind flag): the payload is the written data.
 * - zero range (flag 4, version 2 only): a zero / TRIM of the volume without
 *   payload bytes; its payload is 8 bytes, the u64 length of the range (so a
 *   zero record always fits one 512-byte slot, whatever its length), covered
 *   by the CRC like any payload.
 * - wrap padding (flag 2): no payload; see {@link FLAG_PAD}.
 *
 * Versions: version 1 (no zero records) and version 2 share this layout.
 * This build writes version 2 records and superblocks and reads both; a
 * version-1 file is taken over as is (its records replay unchanged; its
 * superblock is rewritten as version 2 at open, so a version-1 build then
 * refuses the file with `BM_ERR_NOT_SUPPORTED` instead of misreading it).
 *
 * Superblock slot (512 bytes):
 * ```
 *  0 u32 magic 'BMJS'     4 u16 version      6 u16 reserved
 *  8 u32 journal id      12 u32 alignment (512)   16 u64 ring bytes
 * 24 u64 generation      32 u32 epoch       36 u32 epoch of the tail record
 * 40 u64 tail position   48 u64 tail seq (0 = no pending record)
 * 56 u64 last seq        64 f64 creation time (ms since 1970)
 * 72 u32 n = bits used in the release map (at most 3456)
 * 76 release map: bit i (byte 76 + i/8, bit i%8) = the i-th record from the tail
 *    was already released (acknowledged out of order)
 * 508 u32 CRC-32 of bytes 0..507
 * ```
 *
 * @module
 * @internal
 */

import { crc32 } from 'node:zlib';

/** Records and the ring are aligned to this many bytes. */
export const ALIGN = 512;
/** Bytes before the ring (two superblock pages). */
export const RING_START = 8192;
/** Positions of the two superblock slots. */
export const SUPERBLOCK_SLOTS = [0, 4096] as const;
/** Bytes of one superblock slot. */
export const SUPERBLOCK_BYTES = 512;
/** Bytes of a record header. */
export const RECORD_HEADER_BYTES = 48;
/** Format version written by this build (2: zero range records). */
export const FORMAT_VERSION = 2;
/** Oldest format version this build reads (1: writes and wrap markers only). */
export const MIN_FORMAT_VERSION = 1;
/** 'BMJR' as a little-endian u32. */
export const RECORD_MAGIC = 0x524a4d42;
/** 'BMJS' as a little-endian u32. */
export const SUPERBLOCK_MAGIC = 0x534a4d42;
/** Record flag: the write carried FUA. */
export const FLAG_FUA = 1;
/** Record flag: wrap padding up to the end of the ring; the record with the same seq follows at position 0. */
export const FLAG_PAD = 2;
/** Record flag (version 2): a zero range; the payload is {@link ZERO_PAYLOAD_BYTES} bytes, the u64 range length. */
export const FLAG_ZERO = 4;
/** Payload bytes of a zero range record (the u64 length). */
export const ZERO_PAYLOAD_BYTES = 8;

const TWO_32 = 2 ** 32;
const CRC_FIELD = 44;
const SUPER_CRC_FIELD = 508;
const RELEASE_MAP_AT = 76;
/** Records after the tail whose out-of-order release a checkpoint can remember. */
export const RELEASE_MAP_BITS = (SUPER_CRC_FIELD - RELEASE_MAP_AT) * 8;

/** Rounds `n` up to a multiple of {@link ALIGN}. */
export function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** Ring bytes occupied by a record with `dataLength` payload bytes. */
export function recordBytes(dataLength: number): number {
  return alignUp(RECORD_HEADER_BYTES + dataLength);
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32LE(value >>> 0, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function readU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32LE(at + 4);
  // Above 2^53 - 1 the value is not a safe integer: report it as invalid.
  if (hi > 0x1fffff) return -1;
  return hi * TWO_32 + buf.readUInt32LE(at);
}

/** Fields of a record header. */
export interface RecordHeader {
  /** Format version of the record ({@link MIN_FORMAT_VERSION} … {@link FORMAT_VERSION}). */
  version: number;
  flags: number;
  journalId: number;
  epoch: number;
  seq: number;
  timestamp: number;
  offset: number;
  dataLength: number;
  crc: number;
}

/** True when `flags` is a valid combination for a record of format `version`. */
export function recordFlagsValid(version: number, flags: number): boolean {
  const known = version >= 2 ? FLAG_FUA | FLAG_PAD | FLAG_ZERO : FLAG_FUA | FLAG_PAD;
  return (flags & ~known) === 0 && (flags & (FLAG_PAD | FLAG_ZERO)) !== (FLAG_PAD | FLAG_ZERO);
}

/** The payload of a zero range record of `length` bytes. */
export function encodeZeroPayload(length: number): Buffer {
  const out = Buffer.allocUnsafe(ZERO_PAYLOAD_BYTES);
  writeU64(out, 0, length);
  return out;
}

/** The range length stored in a zero record's payload; -1 when it is not {@link ZERO_PAYLOAD_BYTES} bytes of a safe integer. */
export function decodeZeroPayload(payload: Buffer): number {
  return payload.length === ZERO_PAYLOAD_BYTES ? readU64(payload, 0) : -1;
}

/**
 * Writes a record header of the current {@link FORMAT_VERSION} into `out`
 * (48 bytes at 0) with the CRC over the header fields and `payload`.
 */
export function encodeRecordHeader(
  out: Buffer,
  fields: Omit<RecordHeader, 'version' | 'crc' | 'dataLength'>,
  payload: Uint8Array,
): void {
  out.writeUInt32LE(RECORD_MAGIC, 0);
  out.writeUInt16LE(FORMAT_VERSION, 4);
  out.writeUInt16LE(fields.flags, 6);
  out.writeUInt32LE(fields.journalId, 8);
  out.writeUInt32LE(fields.epoch, 12);
  writeU64(out, 16, fields.seq);
  out.writeDoubleLE(fields.timestamp, 24);
  writeU64(out, 32, fields.offset);
  out.writeUInt32LE(payload.length, 40);
  out.writeUInt32LE(crc32(payload, crc32(out.subarray(0, CRC_FIELD))), CRC_FIELD);
}

/**
 * Parses the record header at `buf[at..at+48)`; undefined when the magic,
 * version (not {@link MIN_FORMAT_VERSION} … {@link FORMAT_VERSION}) or a
 * 64-bit field is invalid. Neither the CRC (see {@link recordCrcOk}) nor the
 * flags (see {@link recordFlagsValid}) are checked here.
 */
export function decodeRecordHeader(buf: Buffer, at = 0): RecordHeader | undefined {
  if (buf.length - at < RECORD_HEADER_BYTES) return undefined;
  const version = buf.readUInt16LE(at + 4);
  if (buf.readUInt32LE(at) !== RECORD_MAGIC || version < MIN_FORMAT_VERSION || version > FORMAT_VERSION) return undefined;
  const seq = readU64(buf, at + 16);
  const offset = readU64(buf, at + 32);
  if (seq <= 0 || offset < 0) return undefined;
  return {
    version,
    flags: buf.readUInt16LE(at + 6),
    journalId: buf.readUInt32LE(at + 8),
    epoch: buf.readUInt32LE(at + 12),
    seq,
    timestamp: buf.readDoubleLE(at + 24),
    offset,
    dataLength: buf.readUInt32LE(at + 40),
    crc: buf.readUInt32LE(at + CRC_FIELD),
  };
}

/** True when the CRC stored in the header at `buf[at..)` matches the header fields and `payload`. */
export function recordCrcOk(buf: Buffer, at: number, payload: Uint8Array): boolean {
  return crc32(payload, crc32(buf.subarray(at, at + CRC_FIELD))) === buf.readUInt32LE(at + CRC_FIELD);
}

/** Fields of a superblock slot. */
export interface Superblock {
  journalId: number;
  ringBytes: number;
  generation: number;
  epoch: number;
  tailEpoch: number;
  tailPos: number;
  tailSeq: number;
  lastSeq: number;
  createdAt: number;
  /**
   * Release map: `released[i]` is true when the i-th record from the tail was
   * already acknowledged (out of order) at checkpoint time. At most
   * {@link RELEASE_MAP_BITS} entries.
   */
  released: readonly boolean[];
}

/** Encodes a superblock slot (512 bytes). */
export function encodeSuperblock(sb: Superblock): Buffer {
  const out = Buffer.alloc(SUPERBLOCK_BYTES);
  out.writeUInt32LE(SUPERBLOCK_MAGIC, 0);
  out.writeUInt16LE(FORMAT_VERSION, 4);
  out.writeUInt32LE(sb.journalId, 8);
  out.writeUInt32LE(ALIGN, 12);
  writeU64(out, 16, sb.ringBytes);
  writeU64(out, 24, sb.generation);
  out.writeUInt32LE(sb.epoch, 32);
  out.writeUInt32LE(sb.tailEpoch, 36);
  writeU64(out, 40, sb.tailPos);
  writeU64(out, 48, sb.tailSeq);
  writeU64(out, 56, sb.lastSeq);
  out.writeDoubleLE(sb.createdAt, 64);
  const bits = Math.min(sb.released.length, RELEASE_MAP_BITS);
  out.writeUInt32LE(bits, 72);
  for (let i = 0; i < bits; i++) {
    if (sb.released[i] === true) out[RELEASE_MAP_AT + (i >>> 3)] = (out[RELEASE_MAP_AT + (i >>> 3)] as number) | (1 << (i & 7));
  }
  out.writeUInt32LE(crc32(out.subarray(0, SUPER_CRC_FIELD)), SUPER_CRC_FIELD);
  return out;
}

/** Result of {@link decodeSuperblock}. */
export type SuperblockResult =
  | { ok: true; superblock: Superblock }
  | { ok: false; reason: 'empty' | 'invalid' | 'version'; version?: number };

/**
 * Decodes a superblock slot (version {@link MIN_FORMAT_VERSION} … {@link FORMAT_VERSION}: same layout):
 * `empty` when all zero, `version` for another format, `invalid` otherwise.
 */
export function decodeSuperblock(buf: Buffer): SuperblockResult {
  if (buf.length < SUPERBLOCK_BYTES) return { ok: false, reason: buf.every((b) => b === 0) ? 'empty' : 'invalid' };
  if (buf.readUInt32LE(0) !== SUPERBLOCK_MAGIC) {
    return { ok: false, reason: buf.subarray(0, SUPERBLOCK_BYTES).every((b) => b === 0) ? 'empty' : 'invalid' };
  }
  if (crc32(buf.subarray(0, SUPER_CRC_FIELD)) !== buf.readUInt32LE(SUPER_CRC_FIELD)) return { ok: false, reason: 'invalid' };
  const version = buf.readUInt16LE(4);
  if (version < MIN_FORMAT_VERSION || version > FORMAT_VERSION) return { ok: false, reason: 'version', version };
  const superblock: Superblock = {
    journalId: buf.readUInt32LE(8),
    ringBytes: readU64(buf, 16),
    generation: readU64(buf, 24),
    epoch: buf.readUInt32LE(32),
    tailEpoch: buf.readUInt32LE(36),
    tailPos: readU64(buf, 40),
    tailSeq: readU64(buf, 48),
    lastSeq: readU64(buf, 56),
    createdAt: buf.readDoubleLE(64),
    released: [],
  };
  const bits = buf.readUInt32LE(72);
  if (bits > RELEASE_MAP_BITS) return { ok: false, reason: 'invalid' };
  const released: boolean[] = [];
  for (let i = 0; i < bits; i++) released.push(((buf[RELEASE_MAP_AT + (i >>> 3)] as number) & (1 << (i & 7))) !== 0);
  superblock.released = released;
  const { ringBytes, generation, tailPos, tailSeq, lastSeq } = superblock;
  if (
    buf.readUInt32LE(12) !== ALIGN ||
    ringBytes < 4 * ALIGN ||
    ringBytes % ALIGN !== 0 ||
    generation < 0 ||
    tailPos < 0 ||
    tailPos >= ringBytes ||
    tailPos % ALIGN !== 0 ||
    tailSeq < 0 ||
    lastSeq < 0
  ) {
    return { ok: false, reason: 'invalid' };
  }
  return { ok: true, superblock };
}
