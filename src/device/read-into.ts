/**
 * Reading into a caller's buffer on any {@link BlockDevice}.
 *
 * @module
 */
import type { BlockDevice } from './block-device.js';

/**
 * Reads `target.length` bytes at `offset` of `device` into `target`: with the
 * device's own `readInto` when it has one, else by `read` and a copy.
 */
export async function readInto(device: BlockDevice, offset: number, target: Uint8Array): Promise<void> {
  if (device.readInto !== undefined) return device.readInto(offset, target);
  target.set(await device.read(offset, target.length));
}
