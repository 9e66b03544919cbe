/**
 * A block device for fuzz targets that checks every call the code under
 * test makes: a write, trim or read outside the device or off its block
 * size is a bug of the caller (it should have been refused earlier), so it
 * is recorded as a violation instead of being passed on. `readOnly` records
 * any write at all.
 */
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { WriteOptions } from '../../src/device/block-device.js';

export class GuardDevice extends MemoryBlockDevice {
  readonly violations: string[] = [];
  readOnly = false;
  writes = 0;

  #check(op: string, offset: number, length: number): boolean {
    const bad =
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size || offset % this.blockSize !== 0 || length % this.blockSize !== 0;
    if (bad) this.violations.push(`${op} at ${offset}+${length} on a device of ${this.size} bytes / block ${this.blockSize}`);
    if (op !== 'read' && this.readOnly) this.violations.push(`${op} at ${offset}+${length} on a read-only export`);
    return !bad;
  }

  override read(offset: number, length: number): Promise<Buffer> {
    this.#check('read', offset, length);
    return super.read(offset, length);
  }

  override write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.writes++;
    this.#check('write', offset, data.byteLength);
    return super.write(offset, data, options);
  }

  override trim(offset: number, length: number): Promise<void> {
    this.#check('trim', offset, length);
    return super.trim(offset, length);
  }
}
