/**
 * Bitmap resync and online verify of one primary volume: walks the regions
 * to copy (or to compare), with bounded concurrency (`p-queue`), an optional
 * bandwidth cap and progress reporting.
 *
 * @module
 */
import PQueue from 'p-queue';
import type { Clock } from '../clock.js';
import { RateLimiter } from '../resync/rate-limiter.js';
import { ProgressTracker, type ProgressSnapshot } from '../resync/progress.js';
import type { RegionHashAlgorithm } from '../resync/region-hash.js';
import type { BitmapRegion } from '../resync/dirty-bitmap.js';
import type { BlockDevice } from '../device/block-device.js';
import type { PrimaryVolume } from './primary-volume.js';

/** Resync options of a primary. */
export interface ResyncOptions {
  /** Region size of the dirty bitmap in bytes (default 64 KiB). */
  regionSize?: number;
  /** Regions copied (or compared) at once (default 4). */
  concurrency?: number;
  /** Bandwidth cap of resync data in bytes per second (default 0: unlimited). */
  rateBytesPerSecond?: number;
  /**
   * Checksum resync: compare the region's digest on both sides first and
   * send only regions that differ (like DRBD's csums-alg). Default false.
   */
  checksum?: boolean;
  /** Hash algorithm for checksum resync and verify (default `sha1`). */
  hash?: RegionHashAlgorithm;
}

/** What a finished resync did. */
export interface ResyncResult {
  /** Regions visited. */
  regions: number;
  /** Regions whose data was sent. */
  regionsSent: number;
  /** Payload bytes sent. */
  bytesSent: number;
  /** Bytes sent as zero ranges (known zero, or read as all zero): a small record each, no payload. */
  zeroBytesSent: number;
  progress: ProgressSnapshot;
}

/** What a finished verify found. */
export interface VerifyResult {
  regions: number;
  /** Byte ranges whose digests differ. */
  mismatches: Array<{ offset: number; length: number }>;
  progress: ProgressSnapshot;
}

/** Settings of one run. @internal */
export interface RunSettings {
  clock: Clock;
  concurrency: number;
  rateBytesPerSecond: number;
  checksum: boolean;
  hash: RegionHashAlgorithm;
  onProgress(snapshot: ProgressSnapshot): void;
}

/**
 * Copies every region the volume needs to resync, until none is left
 * (regions marked during the run are picked up by further passes).
 */
export async function runResync(volume: PrimaryVolume, s: RunSettings): Promise<ResyncResult> {
  const progress = new ProgressTracker({ total: volume.resyncBytes, clock: s.clock });
  progress.on('progress', s.onProgress);
  const limiter = new RateLimiter({ bytesPerSecond: s.rateBytesPerSecond, clock: s.clock });
  const result = { regions: 0, regionsSent: 0, bytesSent: 0, zeroBytesSent: 0 };
  // the regions are durably marked and the target recorded inconsistent before the first copy
  await volume.beginResync();
  volume.setResyncing(true);
  volume.resyncProgress = progress;
  try {
    for (let pass = 0; volume.resyncBytes > 0; pass++) {
      if (pass > 0) progress.setTotal(progress.total + volume.resyncBytes);
      const batches = await zeroRuns(volume.device, [...volume.resyncRegions()]);
      await forEachRegion(batches, s.concurrency, async (batch) => {
        const copyOne = async (region: BitmapRegion): Promise<void> => {
          await limiter.take(region.length);
          const sent = await volume.resyncRegion(region, s.checksum ? s.hash : undefined);
          result.regions++;
          if (sent.bytes + sent.zeroBytes > 0) result.regionsSent++;
          result.bytesSent += sent.bytes;
          result.zeroBytesSent += sent.zeroBytes;
          progress.add(region.length);
        };
        if (batch.zero) {
          const sent = await volume.resyncZeroRun(batch.regions, s.checksum ? s.hash : undefined);
          if (sent !== undefined) {
            result.regions += batch.regions.length;
            if (sent.zeroBytes > 0) result.regionsSent += batch.regions.length;
            result.zeroBytesSent += sent.zeroBytes;
            progress.add(batch.regions.reduce((n, r) => n + r.length, 0));
            return;
          }
        }
        // not (or no longer) known zero: region by region
        for (const region of batch.regions) await copyOne(region);
      });
    }
  } finally {
    if (volume.resyncProgress === progress) volume.resyncProgress = undefined;
    volume.setResyncing(false);
    progress.finish();
  }
  return { ...result, progress: progress.snapshot() };
}

/** Compares every region of `regions` (default: the whole volume) on both sides. */
export async function runVerify(volume: PrimaryVolume, regions: BitmapRegion[], s: RunSettings): Promise<VerifyResult> {
  const total = regions.reduce((n, r) => n + r.length, 0);
  const progress = new ProgressTracker({ total, clock: s.clock });
  progress.on('progress', s.onProgress);
  const limiter = new RateLimiter({ bytesPerSecond: s.rateBytesPerSecond, clock: s.clock });
  const mismatches: Array<{ offset: number; length: number }> = [];
  try {
    await forEachRegion(regions, s.concurrency, async (region) => {
      await limiter.take(region.length);
      if (!(await volume.verifyRegion(region, s.hash))) mismatches.push({ offset: region.offset, length: region.length });
      progress.add(region.length);
    });
  } finally {
    progress.finish();
  }
  mismatches.sort((a, b) => a.offset - b.offset);
  return { regions: regions.length, mismatches, progress: progress.snapshot() };
}

/** Largest run of known-zero regions sent as one zero range by a resync. */
export const MAX_ZERO_RUN = 64 * 1024 * 1024;

/** Regions to copy in order, in batches: a run of adjacent regions the device knows are zero, or one region. */
interface RegionBatch {
  zero: boolean;
  regions: BitmapRegion[];
}

/** Splits `regions` (in order) into batches, using the device's allocation map when it has one. */
async function zeroRuns(device: BlockDevice, regions: BitmapRegion[]): Promise<RegionBatch[]> {
  const known = device.supports.allocation === true && device.blockStatus !== undefined && regions.length > 0;
  const extents = known ? await device.blockStatus!(0, device.size) : [];
  const out: RegionBatch[] = [];
  let e = 0;
  for (const region of regions) {
    while (e < extents.length && extents[e]!.offset + extents[e]!.length <= region.offset) e++;
    const ext = extents[e];
    const zero = ext !== undefined && ext.zero && ext.offset <= region.offset && ext.offset + ext.length >= region.offset + region.length;
    const last = out.at(-1);
    const prev = last?.regions.at(-1);
    if (zero && last?.zero === true && prev!.index + 1 === region.index && prev!.offset + prev!.length - last.regions[0]!.offset + region.length <= MAX_ZERO_RUN) {
      last.regions.push(region);
    } else {
      out.push({ zero, regions: [region] });
    }
  }
  return out;
}

async function forEachRegion<T>(regions: T[], concurrency: number, work: (r: T) => Promise<void>): Promise<void> {
  const queue = new PQueue({ concurrency });
  let failure: unknown;
  for (const region of regions) {
    if (failure !== undefined) break;
    if (queue.size > concurrency * 2) await queue.onSizeLessThan(concurrency);
    queue.add(() => work(region)).catch((error: unknown) => {
      failure ??= error;
      queue.clear();
    });
  }
  await queue.onIdle();
  if (failure !== undefined) throw failure;
}
