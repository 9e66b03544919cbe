/**
 * On-disk format of a `FileDirtyBitmap` sidecar file. All integers
 * little-endian; 64-bit integers are two u32 (low word first) and must be safe
 * JavaScript integers.
 *
 * File layout:
 * ```
 * [0, 512)            header slot 0
 * [4096, 4608)        header slot 1 (own 4 KiB page, so one torn write cannot hit both)
 * [8192, 8192 + P)    the bit array, P = ceil(ceil(volumeSize / regionSize) / 8) rounded up to 4 KiB;
 *                     region i is bit i % 8 (LSB first) of byte i / 8; bits past the last region are 0
 * ```
 *
 * Header slot (512 bytes); the valid slot with the highest generation is current:
 * ```
 *  0 u32 magic 'BMDB'      4 u16 version (1)     6 u16 flags (1 = closed cleanly)
 *  8 u32 bitmap id        12 u32 region size    16 u64 volume size
 * 24 u64 region count     32 u64 generation     40 u64 bit array bytes (P)
 * 48 f64 created at (ms since 1970)             56 f64 written at (ms since 1970)
 * 64 … 507 zero           508 u32 CRC-32 of bytes 0..507
 * ```
 *
 * @module
 * @internal
 */

import { crc32 } from 'node:zlib';

/** Positions of the two header slots. */
export const HEADER_SLOTS = [0, 4096] as const;
/** Bytes of one header slot. */
export const HEADER_BYTES = 512;
/** File offset of the bit array. */
export const BITS_START = 8192;
/** Format version written by this build. */
export const BITMAP_FORMAT_VERSION = 1;
/** 'BMDB' as a little-endian u32. */
export const BITMAP_MAGIC = 0x42444d42;
/** Header flag: the bitmap was closed cleanly (every change written and synced). */
export const FLAG_CLEAN = 1;

const TWO_32 = 2 ** 32;
const CRC_FIELD = 508;

/** Fields of a header slot. */
export interface BitmapHeader {
  flags: number;
  bitmapId: number;
  regionSize: number;
  volumeSize: number;
  regionCount: number;
  generation: number;
  bitsBytes: number;
  createdAt: number;
  writtenAt: number;
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32LE(value >>> 0, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function readU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32LE(at + 4);
  if (hi > 0x1fffff) return -1;
  return hi * TWO_32 + buf.readUInt32LE(at);
}

/** Encodes a header slot (512 bytes, CRC included). */
export function encodeBitmapHeader(h: BitmapHeader): Buffer {
  const out = Buffer.alloc(HEADER_BYTES);
  out.writeUInt32LE(BITMAP_MAGIC, 0);
  out.writeUInt16LE(BITMAP_FORMAT_VERSION, 4);
  out.writeUInt16LE(h.flags, 6);
  out.writeUInt32LE(h.bitmapId, 8);
  out.writeUInt32LE(h.regionSize, 12);
  writeU64(out, 16, h.volumeSize);
  writeU64(out, 24, h.regionCount);
  writeU64(out, 32, h.generation);
  writeU64(out, 40, h.bitsBytes);
  out.writeDoubleLE(h.createdAt, 48);
  out.writeDoubleLE(h.writtenAt, 56);
  out.writeUInt32LE(crc32(out.subarray(0, CRC_FIELD)), CRC_FIELD);
  return out;
}

/** Result of {@link decodeBitmapHeader}. */
export type BitmapHeaderResult =
  | { ok: true; header: BitmapHeader }
  | { ok: false; reason: 'empty' | 'invalid' | 'version'; version?: number };

/**
 * Decodes a header slot: `empty` when all zero, `version` for another format
 * version (CRC valid), `invalid` for anything else that fails (magic, CRC,
 * impossible fields). Geometry is checked for internal consistency only.
 */
export function decodeBitmapHeader(buf: Buffer): BitmapHeaderResult {
  if (buf.length < HEADER_BYTES) return { ok: false, reason: buf.every((b) => b === 0) ? 'empty' : 'invalid' };
  const slot = buf.subarray(0, HEADER_BYTES);
  if (slot.readUInt32LE(0) !== BITMAP_MAGIC) return { ok: false, reason: slot.every((b) => b === 0) ? 'empty' : 'invalid' };
  if (crc32(slot.subarray(0, CRC_FIELD)) !== slot.readUInt32LE(CRC_FIELD)) return { ok: false, reason: 'invalid' };
  const version = slot.readUInt16LE(4);
  if (version !== BITMAP_FORMAT_VERSION) return { ok: false, reason: 'version', version };
  const header: BitmapHeader = {
    flags: slot.readUInt16LE(6),
    bitmapId: slot.readUInt32LE(8),
    regionSize: slot.readUInt32LE(12),
    volumeSize: readU64(slot, 16),
    regionCount: readU64(slot, 24),
    generation: readU64(slot, 32),
    bitsBytes: readU64(slot, 40),
    createdAt: slot.readDoubleLE(48),
    writtenAt: slot.readDoubleLE(56),
  };
  const { regionSize, volumeSize, regionCount, generation, bitsBytes } = header;
  if (
    regionSize < 4096 ||
    (regionSize & (regionSize - 1)) !== 0 ||
    volumeSize <= 0 ||
    regionCount !== Math.ceil(volumeSize / regionSize) ||
    generation < 1 ||
    bitsBytes !== Math.ceil(Math.ceil(regionCount / 8) / 4096) * 4096
  ) {
    return { ok: false, reason: 'invalid' };
  }
  return { ok: true, header };
}
