/**
 * Zeroing a range of a device: one shared buffer of zeroes, written in
 * bounded chunks, or `trim` where the device's trim reads back as zeroes.
 *
 * @module
 */
import type { BlockDevice } from './block-device.js';

/** Largest write of zeroes issued at once. */
export const ZERO_CHUNK = 1024 * 1024;

let shared: Buffer | undefined;

/** A shared, never-modified buffer of {@link ZERO_CHUNK} zeroes (allocated on first use). */
export function zeroBuffer(): Buffer {
  shared ??= Buffer.alloc(ZERO_CHUNK);
  return shared;
}

/** Writes zeroes over `[offset, offset + length)` in chunks; with `fua`, flushes once at the end. */
export async function writeZeroes(device: Pick<BlockDevice, 'write' | 'flush'>, offset: number, length: number, fua: boolean): Promise<void> {
  const zero = zeroBuffer();
  for (let pos = 0; pos < length; pos += ZERO_CHUNK) {
    await device.write(offset + pos, zero.subarray(0, Math.min(ZERO_CHUNK, length - pos)));
  }
  if (fua) await device.flush();
}

/** True when every byte of `data` is zero (compared in {@link ZERO_CHUNK} runs with `memcmp`). */
export function isAllZero(data: Uint8Array): boolean {
  const zero = zeroBuffer();
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let pos = 0; pos < buf.length; pos += ZERO_CHUNK) {
    const end = Math.min(buf.length, pos + ZERO_CHUNK);
    if (!buf.subarray(pos, end).equals(zero.subarray(0, end - pos))) return false;
  }
  return true;
}

/**
 * The parts of `[offset, offset + length)` that may hold data: the whole
 * range, unless the device knows its allocation (`supports.allocation`), then
 * its extents not known to read as zeroes.
 */
export async function maybeDataRanges(device: BlockDevice, offset: number, length: number): Promise<Array<{ offset: number; length: number }>> {
  if (length === 0) return [];
  if (device.supports.allocation !== true || device.blockStatus === undefined) return [{ offset, length }];
  const out: Array<{ offset: number; length: number }> = [];
  for (const e of await device.blockStatus(offset, length)) {
    if (e.zero) continue;
    const last = out.at(-1);
    if (last !== undefined && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}

/** True when the device knows (`blockStatus`) that the whole range reads as zeroes. */
export async function knownZero(device: BlockDevice, offset: number, length: number): Promise<boolean> {
  if (device.supports.allocation !== true || device.blockStatus === undefined) return false;
  return (await maybeDataRanges(device, offset, length)).length === 0;
}

/**
 * Zeroes a range: parts the device knows to read as zeroes already are left
 * alone; the others are trimmed when the device supports it (trimmed ranges
 * read as zeroes), else written with {@link writeZeroes}.
 */
export async function zeroDevice(device: BlockDevice, offset: number, length: number, fua: boolean): Promise<void> {
  for (const r of await maybeDataRanges(device, offset, length)) {
    if (device.supports.trim && device.trim !== undefined) await device.trim(r.offset, r.length);
    else await writeZeroes(device, r.offset, r.length, false);
  }
  if (fua) await device.flush();
}

/**
 * Zeroes a range without writing where it reads as zeroes already (a mirror
 * target applying a replicated zero range: its file stays sparse). A device
 * that knows its allocation is asked (see {@link zeroDevice}); any other is
 * read in {@link ZERO_CHUNK} runs and only runs holding data are zeroed.
 * The caller orders this against overlapping writes.
 */
export async function zeroWhereData(device: BlockDevice, offset: number, length: number, fua: boolean): Promise<void> {
  if (device.supports.allocation === true && device.blockStatus !== undefined) {
    await zeroDevice(device, offset, length, fua);
    return;
  }
  for (let pos = 0; pos < length; pos += ZERO_CHUNK) {
    const n = Math.min(ZERO_CHUNK, length - pos);
    if (isAllZero(await device.read(offset + pos, n))) continue;
    if (device.supports.trim && device.trim !== undefined) await device.trim(offset + pos, n);
    else await device.write(offset + pos, zeroBuffer().subarray(0, n));
  }
  if (fua) await device.flush();
}
