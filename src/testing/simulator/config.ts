/**
 * What a simulated schedule runs: the topology's settings and the faults it
 * may inject, drawn from the seed.
 *
 * @module
 */
import type { ReplicationMode } from '../../replication/primary-volume.js';
import type { Rng } from './rng.js';

/** Fault kinds a schedule may inject (see the `faults` setting of a simulation). */
export type FaultKind =
  | 'cut'
  | 'partition'
  | 'delay'
  | 'stall-handshake'
  | 'primary-kill'
  | 'primary-power-loss'
  | 'primary-restart'
  | 'target-kill'
  | 'target-power-loss'
  | 'target-restart'
  | 'device-error'
  | 'resync'
  | 'verify'
  | 'rogue-primary';

/** Every fault kind. */
export const ALL_FAULTS: readonly FaultKind[] = [
  'cut',
  'partition',
  'delay',
  'stall-handshake',
  'primary-kill',
  'primary-power-loss',
  'primary-restart',
  'target-kill',
  'target-power-loss',
  'target-restart',
  'device-error',
  'resync',
  'verify',
  'rogue-primary',
];

/** A volume of the simulated pair. */
export interface SimVolumeConfig {
  name: string;
  mode: Exclude<ReplicationMode, 'local'>;
  size: number;
}

/** The settings of one schedule (all drawn from the seed unless overridden). */
export interface SimConfig {
  volumes: SimVolumeConfig[];
  blockSize: number;
  regionSize: number;
  connections: number;
  heartbeats: boolean;
  maxInFlightPerConnection: number;
  resyncConcurrency: number;
  journalCapacity: number;
  maxAsyncLag: number;
  /** The primary's payload budget (`maxBufferedBytes`). */
  maxBufferedBytes: number;
  /**
   * The link's payload limit (`limits.maxPayloadLength`): at the region size,
   * a write of more blocks goes as several requests, so crashes, cuts and
   * lost replies fall between the parts of one operation.
   */
  maxPayload: number;
  outagePolicy: 'degrade' | 'suspend';
  /**
   * First pairing: the primary's volumes hold data before the pair first
   * meets, and the target is blank — the initial sync must copy it before
   * the pair may be in sync.
   */
  preloaded: boolean;
  /** The primary's `initialSync` (`none` only when not `preloaded`: two blank images are identical). */
  initialSync: 'checksum' | 'full' | 'none';
  /** Fault steps of the schedule. */
  steps: number;
  /** Largest write, in blocks. */
  maxWriteBlocks: number;
  /** User requests in flight at most. */
  concurrency: number;
  /** Virtual ms the pair gets, after the faults heal, to reach in-sync. */
  livenessTimeout: number;
  /** Fault kinds enabled. */
  faults: ReadonlySet<FaultKind>;
}

/** Draws a {@link SimConfig} from `rng`, then applies `overrides`. */
export function drawConfig(rng: Rng, overrides: Partial<SimConfig> = {}): SimConfig {
  const size = rng.pick([256, 512]) * 1024;
  const config: SimConfig = {
    volumes: [
      { name: 's', mode: 'sync', size },
      { name: 'a', mode: 'async', size },
    ],
    blockSize: 4096,
    regionSize: rng.pick([16384, 65536]),
    connections: rng.int(1, 4),
    heartbeats: rng.chance(0.5),
    maxInFlightPerConnection: rng.pick([1, 2, 8, 64]),
    resyncConcurrency: rng.pick([1, 4, 128]),
    journalCapacity: rng.pick([16 * 1024, 64 * 1024, 1024 * 1024]),
    maxAsyncLag: rng.pick([0, 64 * 1024]),
    maxBufferedBytes: rng.pick([32 * 1024, 256 * 1024, 64 * 1024 * 1024]),
    outagePolicy: rng.chance(0.85) ? 'degrade' : 'suspend',
    preloaded: false,
    initialSync: 'checksum',
    steps: rng.int(20, 60),
    maxWriteBlocks: rng.pick([1, 4, 16]),
    concurrency: rng.int(1, 8),
    livenessTimeout: 60_000,
    maxPayload: 8 * 1024 * 1024,
    faults: new Set(ALL_FAULTS),
  };
  // drawn from a stream of its own, so that the schedules of earlier seeds stay as they were
  if (rng.fork('payload').chance(0.5)) config.maxPayload = config.regionSize;
  const pairing = rng.fork('pairing');
  config.preloaded = pairing.chance(0.5);
  config.initialSync = config.preloaded ? pairing.pick(['checksum', 'full'] as const) : pairing.pick(['checksum', 'full', 'none'] as const);
  return { ...config, ...overrides };
}

/** Short human description of a config (for traces). */
export function describeConfig(c: SimConfig): string {
  return [
    `volumes=${c.volumes.map((v) => `${v.name}:${v.mode}:${v.size / 1024}K`).join(',')}`,
    `block=${c.blockSize}`,
    `region=${c.regionSize}`,
    `connections=${c.connections}`,
    `heartbeats=${c.heartbeats}`,
    `window=${c.maxInFlightPerConnection}`,
    `resyncConcurrency=${c.resyncConcurrency}`,
    `journal=${c.journalCapacity}`,
    `maxAsyncLag=${c.maxAsyncLag}`,
    `maxBuffered=${c.maxBufferedBytes}`,
    `maxPayload=${c.maxPayload}`,
    `outage=${c.outagePolicy}`,
    `preloaded=${c.preloaded}`,
    `initialSync=${c.initialSync}`,
    `steps=${c.steps}`,
    `maxWrite=${c.maxWriteBlocks}`,
    `concurrency=${c.concurrency}`,
    `faults=${[...c.faults].join(',')}`,
  ].join(' ');
}
