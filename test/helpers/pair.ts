/**
 * Sets up a mirror target and a primary on loopback TCP (or a given
 * transport) with memory devices, and tears everything down.
 */
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { BlockDevice } from '../../src/device/block-device.js';
import { createMirrorTarget, type MirrorTarget, type MirrorTargetOptions } from '../../src/replication/mirror-target.js';
import { createPrimary, type Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import type { InitialSyncMethod, ReplicationMode } from '../../src/replication/primary-volume.js';

export interface PairVolume {
  name: string;
  mode?: ReplicationMode;
  size?: number;
  primaryDevice?: BlockDevice;
  targetDevice?: BlockDevice;
  /**
   * First pairing (default: `none` when the helper creates both devices —
   * two blank images are identical — else the library's default `checksum`).
   */
  initialSync?: InitialSyncMethod;
}

export interface Pair {
  primary: Primary;
  target: MirrorTarget;
  devices: Map<string, { primary: BlockDevice; target: BlockDevice }>;
  close(): Promise<void>;
}

export async function startPair(
  volumes: PairVolume[],
  options: { primary?: Partial<PrimaryOptions>; target?: Partial<MirrorTargetOptions> } = {},
): Promise<Pair> {
  const devices = new Map<string, { primary: BlockDevice; target: BlockDevice }>();
  for (const v of volumes) {
    const size = v.size ?? 1 << 20;
    devices.set(v.name, {
      primary: v.primaryDevice ?? new MemoryBlockDevice(size, { blockSize: 512 }),
      target: v.targetDevice ?? new MemoryBlockDevice(size, { blockSize: 512 }),
    });
  }
  const target = await createMirrorTarget({
    listen: { host: '127.0.0.1', port: 0 },
    volumes: volumes.map((v) => ({ name: v.name, device: devices.get(v.name)!.target })),
    ...options.target,
  });
  let primary: Primary;
  try {
    primary = await createPrimary({
      peer: target.address,
      volumes: volumes.map((v) => {
        const blank = v.primaryDevice === undefined && v.targetDevice === undefined;
        const initialSync = v.initialSync ?? (blank ? 'none' : undefined);
        return { name: v.name, device: devices.get(v.name)!.primary, mode: v.mode ?? 'sync', ...(initialSync === undefined ? {} : { initialSync }) };
      }),
      ...options.primary,
    });
  } catch (error) {
    await target.close();
    throw error;
  }
  return {
    primary,
    target,
    devices,
    async close() {
      await primary.close({ drain: false });
      await target.close();
    },
  };
}

/** Both images of `name` byte for byte. */
export async function imagesEqual(pair: Pair, name: string): Promise<boolean> {
  const d = pair.devices.get(name)!;
  const a = await d.primary.read(0, d.primary.size);
  const b = await d.target.read(0, d.target.size);
  return a.equals(b);
}

/** Lets pending I/O callbacks and microtasks run (not a sleep: no wall-clock wait). */
export function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
