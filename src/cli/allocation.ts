/**
 * The CLI's allocation maps: each file volume is kept behind an
 * {@link AllocationTrackingDevice} whose map lives in the node's state
 * directory as `<volume>.allocation`. A volume file created by this run
 * starts all-zero; an existing image without a (usable) map starts as "may
 * hold data", and `--scan-zeros` reads it once to mark its all-zero regions.
 *
 * @module
 */
import { join } from 'node:path';
import type { BlockDevice } from '../device/block-device.js';
import { AllocationTrackingDevice } from '../device/allocation-tracking-device.js';
import type { VolumeSpec } from './args.js';
import { ensureStateDir } from './state-dir.js';
import { say, type CliIo } from './runtime.js';
import { formatBytes } from './table.js';

/** Options of {@link trackAllocation}. */
export interface TrackAllocationOptions {
  stateDir: string;
  /** Names of the volume files this run created (they start all-zero). */
  created: ReadonlySet<string>;
  /** `--scan-zeros`: scan the regions the map does not know to be zero. */
  scanZeros: boolean;
  io: CliIo;
  /** Interval between progress lines in ms (default 1000). */
  progressInterval?: number;
}

/** Path of a volume's allocation map in the state directory. */
export function allocationMapPath(stateDir: string, volume: string): string {
  return join(stateDir, `${volume}.allocation`);
}

/**
 * Puts every file volume of `devices` behind its allocation map (in place).
 * Volumes on NBD servers are left as they are. Prints
 * `volume NAME allocation map=created|loaded|untrusted zero=BYTES`, and with
 * `--scan-zeros` progress lines `scan-zeros volume=NAME done=… total=…` and
 * `scan-zeros done volume=NAME zero=BYTES`.
 */
export async function trackAllocation(devices: Map<string, BlockDevice>, specs: readonly VolumeSpec[], options: TrackAllocationOptions): Promise<void> {
  await ensureStateDir(options.stateDir);
  for (const spec of specs) {
    if (spec.nbd !== undefined) continue;
    const inner = devices.get(spec.name)!;
    const device = await AllocationTrackingDevice.open(inner, allocationMapPath(options.stateDir, spec.name), {
      initial: options.created.has(spec.name) ? 'zero' : 'data',
    });
    devices.set(spec.name, device);
    say(options.io, `volume ${spec.name} allocation map=${device.origin} zero=${zeroBytes(device)}`);
    if (options.scanZeros) await scan(spec.name, device, options);
  }
}

function zeroBytes(device: AllocationTrackingDevice): number {
  const map = device.map;
  let n = 0;
  for (let i = 0; i < map.regions; i++) if (!map.isData(i)) n += Math.min(map.regionSize, map.size - i * map.regionSize);
  return n;
}

async function scan(name: string, device: AllocationTrackingDevice, options: TrackAllocationOptions): Promise<void> {
  const interval = options.progressInterval ?? 1000;
  let last = Date.now();
  const result = await device.scanZeros((p) => {
    const now = Date.now();
    if (now - last < interval) return;
    last = now;
    say(options.io, `scan-zeros volume=${name} done=${formatBytes(p.done)} total=${formatBytes(p.total)} (${p.total === 0 ? 100 : Math.floor((p.done * 100) / p.total)} %)`);
  });
  say(options.io, `scan-zeros done volume=${name} read=${formatBytes(result.total)} zero=${formatBytes(zeroBytes(device))}`);
}
