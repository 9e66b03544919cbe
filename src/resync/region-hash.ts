/**
 * Hashing of volume regions for checksum resync (send a region only when its
 * hash differs from the target's, like DRBD's `csums-alg`) and online verify
 * (compare primary and target region by region, like DRBD's `verify-alg`).
 *
 * Memory is bounded: a region is read in chunks of at most 1 MiB with one
 * chunk of read-ahead, and at most `concurrency` regions are hashed at once,
 * so `hashRegions` holds at most `2 × concurrency × chunkSize` bytes of data.
 *
 * Default algorithm: `sha256`. Measured on a 2-core x86-64 VM with SHA
 * extensions (Node 20, OpenSSL 3), `createHash` over 64 KiB buffers:
 * sha256 ≈ 1800 MiB/s, sha1 ≈ 1980 MiB/s, md5 ≈ 830 MiB/s. sha1 is barely
 * faster, md5 is half as fast, and both have practical collisions (a writer
 * able to craft colliding blocks could keep a stale block on a target
 * through a checksum resync). CPUs without SHA extensions make sha256
 * slower than sha1; pass `algorithm: 'sha1'` there if hashing is the bottleneck.
 *
 * @module
 */

import { createHash } from 'node:crypto';
import PQueue from 'p-queue';
import type { BlockDevice } from '../device/block-device.js';
import { checkRange } from '../device/range.js';
import { knownZero, zeroBuffer } from '../device/zero.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';

/** Hash algorithms for region digests (all from `node:crypto`). */
export type RegionHashAlgorithm = 'sha256' | 'sha1' | 'md5';

/** The default region hash algorithm. */
export const DEFAULT_REGION_HASH: RegionHashAlgorithm = 'sha256';
/** Largest (and default) chunk read at once while hashing: 1 MiB. */
export const MAX_HASH_CHUNK = 1024 * 1024;
/** Default number of regions hashed at once by {@link hashRegions}. */
export const DEFAULT_HASH_CONCURRENCY = 4;

const DIGEST_LENGTHS: Readonly<Record<RegionHashAlgorithm, number>> = { sha256: 32, sha1: 20, md5: 16 };

/** A byte range of a device (a {@link BitmapRegion} fits). */
export interface RegionRange {
  /** Byte offset (a multiple of the device block size). */
  readonly offset: number;
  /** Bytes (a multiple of the device block size). */
  readonly length: number;
}

/** Options of {@link hashRegion}. */
export interface RegionHashOptions {
  /** Default {@link DEFAULT_REGION_HASH}. */
  algorithm?: RegionHashAlgorithm;
  /** Bytes read at once: a multiple of the device block size, at most (and by default) 1 MiB. */
  chunkSize?: number;
  /** Stops the work: pending calls reject with `signal.reason`. */
  signal?: AbortSignal;
}

/** Options of {@link hashRegions}. */
export interface HashRegionsOptions extends RegionHashOptions {
  /** Regions hashed at once (1 … 256). Default {@link DEFAULT_HASH_CONCURRENCY}. */
  concurrency?: number;
}

/** Bytes of a digest of `algorithm`. */
export function digestLength(algorithm: RegionHashAlgorithm): number {
  const length = DIGEST_LENGTHS[algorithm];
  if (length === undefined) throw badAlgorithm(algorithm);
  return length;
}

function badAlgorithm(value: unknown): BlockMirrorError {
  return new BlockMirrorError(
    'BM_ERR_INVALID_ARGUMENT',
    `region hash algorithm must be one of ${Object.keys(DIGEST_LENGTHS).join(', ')}, got ${String(value)}`,
  );
}

interface ResolvedHashOptions {
  algorithm: RegionHashAlgorithm;
  chunkSize: number;
  signal: AbortSignal | undefined;
}

function resolveOptions(device: BlockDevice, options: RegionHashOptions | RegionHashAlgorithm | undefined): ResolvedHashOptions {
  const o: RegionHashOptions = typeof options === 'string' ? { algorithm: options } : (options ?? {});
  const algorithm = o.algorithm ?? DEFAULT_REGION_HASH;
  if (!Object.hasOwn(DIGEST_LENGTHS, algorithm)) throw badAlgorithm(algorithm);
  const blockSize = device.blockSize;
  // Block sizes are powers of two up to 64 KiB: 1 MiB is a multiple of each.
  const chunkSize = o.chunkSize ?? MAX_HASH_CHUNK;
  if (
    typeof chunkSize !== 'number' ||
    !Number.isSafeInteger(chunkSize) ||
    chunkSize <= 0 ||
    chunkSize % blockSize !== 0 ||
    chunkSize > MAX_HASH_CHUNK
  ) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `hash chunkSize must be a multiple of the block size ${blockSize}, at most ${MAX_HASH_CHUNK}, got ${String(chunkSize)}`,
      { details: { chunkSize, blockSize } },
    );
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'signal must be an AbortSignal');
  }
  return { algorithm, chunkSize, signal: o.signal };
}

const zeroDigests = new Map<string, Buffer>();

/** Digest of `length` zero bytes (computed once per algorithm and length). */
export function zeroDigest(algorithm: RegionHashAlgorithm, length: number): Buffer {
  const key = `${algorithm}:${length}`;
  let d = zeroDigests.get(key);
  if (d === undefined) {
    const hash = createHash(algorithm);
    const zero = zeroBuffer();
    for (let pos = 0; pos < length; pos += zero.length) hash.update(zero.subarray(0, Math.min(zero.length, length - pos)));
    d = hash.digest();
    if (zeroDigests.size >= 64) zeroDigests.clear();
    zeroDigests.set(key, d);
  }
  return Buffer.from(d);
}

async function hashResolved(device: BlockDevice, offset: number, length: number, o: ResolvedHashOptions): Promise<Buffer> {
  checkRange(device, offset, length);
  o.signal?.throwIfAborted();
  // a range the device knows to be zero is not read
  if (length > 0 && (await knownZero(device, offset, length))) return zeroDigest(o.algorithm, length);
  const hash = createHash(o.algorithm);
  const end = offset + length;
  let position = offset;
  const readNext = (): Promise<Buffer> | null => {
    if (position >= end) return null;
    const want = Math.min(o.chunkSize, end - position);
    const at = position;
    position += want;
    return device.read(at, want).then(
      (data) => {
        if (data.length !== want) {
          throw new BlockMirrorError('BM_ERR_IO', `device read of ${want} bytes at ${at} returned ${data.length}`, {
            details: { offset: at, length: want, returned: data.length },
          });
        }
        return data;
      },
      (error: unknown) => {
        throw toBlockMirrorError(error);
      },
    );
  };
  let next = readNext();
  while (next !== null) {
    const data = await next;
    o.signal?.throwIfAborted();
    next = readNext(); // read-ahead while this chunk is hashed
    hash.update(data);
  }
  return hash.digest();
}

/**
 * The digest of `length` bytes of `device` at `offset`, read in chunks of at
 * most 1 MiB. `offset` and `length` must be aligned to the device block size.
 * The 4th argument is the algorithm or an options object.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` / `BM_ERR_OUT_OF_RANGE` /
 *   `BM_ERR_MISALIGNED` for a bad range or option; the device's read errors
 *   (as coded errors); `signal.reason` when aborted.
 */
export async function hashRegion(
  device: BlockDevice,
  offset: number,
  length: number,
  options?: RegionHashAlgorithm | RegionHashOptions,
): Promise<Buffer> {
  return hashResolved(device, offset, length, resolveOptions(device, options));
}

/**
 * The digests of `regions` (any iterable, consumed lazily — a bitmap's
 * `dirtyRegions()` works), in input order, hashing at most `concurrency`
 * regions at once. The first failure stops the work and rejects.
 *
 * For a whole large volume, call it in batches (e.g. 1024 regions) rather
 * than on every region at once: the result holds one digest per region.
 *
 * @throws {BlockMirrorError} as {@link hashRegion}; `BM_ERR_INVALID_ARGUMENT` for a bad concurrency.
 */
export async function hashRegions(
  device: BlockDevice,
  regions: Iterable<RegionRange>,
  options: HashRegionsOptions = {},
): Promise<Buffer[]> {
  const resolved = resolveOptions(device, options);
  const concurrency = options.concurrency ?? DEFAULT_HASH_CONCURRENCY;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 256) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `hash concurrency must be an integer from 1 to 256, got ${String(concurrency)}`);
  }
  const queue = new PQueue({ concurrency });
  const digests: Buffer[] = [];
  let failure: { error: unknown } | null = null;
  let index = 0;
  for (const region of regions) {
    if (failure !== null) break;
    if (queue.size >= concurrency) await queue.onSizeLessThan(concurrency);
    if (failure !== null) break;
    const i = index++;
    const { offset, length } = region;
    queue
      .add(async () => {
        if (failure !== null) return;
        digests[i] = await hashResolved(device, offset, length, resolved);
      })
      .catch((error: unknown) => {
        failure ??= { error };
        queue.clear();
      });
  }
  await queue.onIdle();
  if (failure !== null) throw (failure as { error: unknown }).error;
  return digests;
}

/**
 * Indexes where two digest lists differ (in order). Entries present in only
 * one list count as mismatches.
 */
export function compareDigests(a: readonly Uint8Array[], b: readonly Uint8Array[]): number[] {
  const out: number[] = [];
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined || y === undefined || !Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(y)) out.push(i);
  }
  return out;
}
