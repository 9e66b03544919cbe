/**
 * A BlockDevice wrapper for tests: records every operation (with its FUA
 * flag), and can hold writes at a gate until the test opens it — so a test can
 * decide exactly when a device write completes, without sleeping.
 */
import { EventEmitter } from 'eventemitter3';
import type { BlockDevice, WriteOptions } from '../../src/device/block-device.js';

export interface RecordedOp {
  op: 'write' | 'flush' | 'trim' | 'read';
  offset: number;
  length: number;
  fua: boolean;
}

export class RecordingDevice extends EventEmitter<{ op: [RecordedOp]; held: [RecordedOp]; done: [RecordedOp] }> implements BlockDevice {
  readonly inner: BlockDevice;
  readonly ops: RecordedOp[] = [];
  #gate: Promise<void> | undefined;
  #open: (() => void) | undefined;

  constructor(inner: BlockDevice) {
    super();
    this.inner = inner;
  }

  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get supports(): BlockDevice['supports'] {
    return this.inner.supports;
  }

  /** From now on, writes wait until {@link release}. */
  hold(): void {
    if (this.#gate !== undefined) return;
    this.#gate = new Promise<void>((resolve) => {
      this.#open = resolve;
    });
  }

  /** Lets held writes (and later ones) through. */
  release(): void {
    this.#open?.();
    this.#gate = undefined;
    this.#open = undefined;
  }

  count(op: RecordedOp['op']): number {
    return this.ops.filter((o) => o.op === op).length;
  }

  #record(op: RecordedOp): void {
    this.ops.push(op);
    this.emit('op', op);
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }

  async write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    const op: RecordedOp = { op: 'write', offset, length: data.length, fua: options?.fua === true };
    this.#record(op);
    if (this.#gate !== undefined) {
      this.emit('held', op);
      await this.#gate;
    }
    await this.inner.write(offset, data, options);
    this.emit('done', op);
  }

  async flush(): Promise<void> {
    this.#record({ op: 'flush', offset: 0, length: 0, fua: false });
    await this.inner.flush();
  }

  async trim(offset: number, length: number): Promise<void> {
    this.#record({ op: 'trim', offset, length, fua: false });
    await this.inner.trim!(offset, length);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
