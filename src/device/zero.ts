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

/** Zeroes a range: `trim` when the device supports it (trimmed ranges read as zeroes), else {@link writeZeroes}. */
export async function zeroDevice(device: BlockDevice, offset: number, length: number, fua: boolean): Promise<void> {
  if (device.supports.trim && device.trim !== undefined) {
    await device.trim(offset, length);
    if (fua) await device.flush();
    return;
  }
  await writeZeroes(device, offset, length, fua);
}
