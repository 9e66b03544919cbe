/**
 * The {@link BlockDevice} interface: what blockmirror needs from storage.
 *
 * @module
 */

/** Optional capabilities of a {@link BlockDevice} (like abstract-level's `supports`). */
export interface BlockDeviceSupports {
  /** `trim()` is implemented (discards a range; later reads return zeroes). */
  readonly trim: boolean;
  /** `flush()` makes completed writes durable (false: flush is a no-op because nothing is volatile or nothing is durable). */
  readonly flush: boolean;
  /** `write(..., { fua: true })` is durable when it resolves. */
  readonly fua: boolean;
  /** The device can be closed and opened again on the same backing store with its content kept. */
  readonly reopen: boolean;
  /**
   * `blockStatus()` is implemented: the device can tell which ranges are
   * known to read as zeroes (and which are not allocated). Absent means false.
   */
  readonly allocation?: boolean;
}

/**
 * One extent of a device's allocation map, as returned by
 * {@link BlockDevice.blockStatus}.
 */
export interface BlockExtent {
  /** Start in bytes (a multiple of the device's block size). */
  readonly offset: number;
  /** Length in bytes (a positive multiple of the device's block size). */
  readonly length: number;
  /** The range certainly reads as zeroes. `false` means "may hold data" (always a correct answer). */
  readonly zero: boolean;
  /** The range is not allocated in the backing storage (a hole). Says nothing about the content unless `zero` is set too. */
  readonly hole: boolean;
}

/** Options of a single write. */
export interface WriteOptions {
  /** Force unit access: the write is durable when the promise resolves. */
  fua?: boolean;
}

/**
 * Random-access storage of fixed size addressed in bytes.
 *
 * Contract (checked by `blockDeviceSuite` from `blockmirror/testing`):
 * - `offset` and `length` are non-negative safe integers, multiples of
 *   `blockSize`, and `offset + length <= size`; anything else is refused with
 *   `BM_ERR_OUT_OF_RANGE` / `BM_ERR_MISALIGNED` / `BM_ERR_INVALID_ARGUMENT`
 *   before any byte is touched.
 * - `read` resolves with exactly `length` bytes; never-written bytes read as zero.
 * - Concurrent requests to disjoint ranges are independent. The order in which
 *   concurrent overlapping requests take effect is unspecified (callers order them).
 * - After `close()`, every call rejects with `BM_ERR_CLOSED`.
 */
export interface BlockDevice {
  /** Size in bytes (a multiple of `blockSize`). */
  readonly size: number;
  /** Alignment unit in bytes (a power of two, 1 … 65536). */
  readonly blockSize: number;
  /** Optional capabilities. */
  readonly supports: BlockDeviceSupports;
  /** Reads `length` bytes at `offset`. The returned buffer belongs to the caller. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Reads `target.length` bytes at `offset` into `target` (same checks as
   * `read`, with `target.length` as the length). Optional: it lets a caller
   * reuse its buffers (the NBD server keeps a pool of them) instead of getting
   * a new one per read. `target` must not be used until the promise settles;
   * after a rejection its content is unspecified.
   */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /** Writes `data` at `offset`. The caller must not modify `data` until the promise settles. */
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void>;
  /** Makes every write that completed before this call durable. */
  flush(): Promise<void>;
  /** Discards a range (reads return zeroes afterwards). Present when `supports.trim`. */
  trim?(offset: number, length: number): Promise<void>;
  /**
   * The allocation status of `[offset, offset + length)`: adjacent extents in
   * order, covering exactly that range (empty for `length` 0), each a
   * multiple of `blockSize`. Conservative: an extent is `zero` only when it
   * certainly reads as zeroes; data may always be reported as "not zero".
   * A snapshot: writes running concurrently may or may not be reflected.
   * Present when `supports.allocation`; same argument checks as `read`.
   */
  blockStatus?(offset: number, length: number): Promise<BlockExtent[]>;
  /** Releases the device. Idempotent. */
  close(): Promise<void>;
}
