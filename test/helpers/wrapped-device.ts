/**
 * A BlockDevice that forwards everything to `inner`: test devices extend it
 * and override only the operation they hold, count or fail.
 */
import type { BlockDevice, WriteOptions } from '../../src/device/block-device.js';

export class WrappedDevice implements BlockDevice {
  constructor(readonly inner: BlockDevice) {}
  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get supports(): BlockDevice['supports'] {
    return this.inner.supports;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.inner.write(offset, data, options);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
