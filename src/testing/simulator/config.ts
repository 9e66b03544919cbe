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
  /**
   * The workload issues requests in bursts (up to `concurrency` in one tick)
   * instead of one per tick: writes then overlap in time, so that the target
   * may apply them in any order happens-before allows.
   */
  burst: boolean;
  /** Virtual ms the pair gets, after the faults heal, to reach in-sync. */
  livenessTimeout: number;
  /** Fault kinds enabled. */
  faults: ReadonlySet<FaultKind>;
  /**
   * Probability that a request is a zero/TRIM of more than 4 GiB (issue 11,
   * scenario 5; needs volumes above 4 GiB, which the simulator keeps sparse).
   * 0 in the default family.
   */
  bigZero: number;
  /**
   * How user requests reach the primary: `api` calls the volume; `nbd` sends
   * them through the real NBD server (`primaryVolumeBackend`) over an
   * in-memory connection (issue 11, scenario 12).
   */
  front: 'api' | 'nbd';
  /**
   * Both nodes keep their volumes behind an `AllocationTrackingDevice` whose
   * map lives on a memory file system with crash semantics (issue 13): zero
   * ranges are skipped and sent as records, and a power loss must never
   * leave a map calling data zero.
   */
  allocationMaps: boolean;
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
    burst: false,
    faults: new Set(ALL_FAULTS),
    bigZero: 0,
    front: 'api',
    allocationMaps: false,
  };
  // drawn from a stream of its own, so that the schedules of earlier seeds stay as they were
  if (rng.fork('payload').chance(0.5)) config.maxPayload = config.regionSize;
  config.burst = rng.fork('burst').chance(0.5);
  const pairing = rng.fork('pairing');
  config.preloaded = pairing.chance(0.5);
  config.initialSync = config.preloaded ? pairing.pick(['checksum', 'full'] as const) : pairing.pick(['checksum', 'full', 'none'] as const);
  config.allocationMaps = rng.fork('allocation').chance(0.5);
  return { ...config, ...overrides };
}

/** Volumes above this size are kept sparse (only written blocks in memory). */
export const SPARSE_ABOVE = 64 * 1024 * 1024;

/** Fault kinds of the large-volume family (no full resync or verify of 8 GiB, no rogue primary). */
export const BIG_FAULTS: readonly FaultKind[] = ALL_FAULTS.filter((k) => k !== 'verify' && k !== 'rogue-primary');

/**
 * The large-volume family (issue 11, scenario 5): two 8 GiB volumes (sync and
 * async, sparse in memory), one request in eight a zero/TRIM of 4–5 GiB among
 * ordinary writes; regions of 1 MiB so that a resync of such a range stays
 * cheap; every fault kind but a full verify and the rogue primary.
 */
export function drawBigConfig(rng: Rng, overrides: Partial<SimConfig> = {}): SimConfig {
  const base = drawConfig(rng);
  const size = 8 * 1024 * 1024 * 1024;
  const regionSize = 1024 * 1024;
  const config: SimConfig = {
    ...base,
    volumes: [
      { name: 's', mode: 'sync', size },
      { name: 'a', mode: 'async', size },
    ],
    regionSize,
    maxPayload: rng.pick([regionSize, 8 * 1024 * 1024]),
    maxBufferedBytes: Math.max(base.maxBufferedBytes, 4 * regionSize),
    resyncConcurrency: rng.pick([1, 4, 16]),
    // a full journal hands every later request, a 4 GiB zero too, to the bitmap: a resync of 4 GiB per schedule
    journalCapacity: 1024 * 1024 * 1024,
    faults: new Set(BIG_FAULTS),
    steps: rng.int(15, 40),
    bigZero: 0.25,
    // two blank 8 GiB volumes: paired as identical (a first checksum sync would hash 16 GiB per start)
    preloaded: false,
    initialSync: 'none',
    // a resync after the heal may copy GiBs and zero GiB ranges on a target without an allocation map
    // (read in 1 MiB runs at 0–2 virtual ms each): seed 223 needed 70 virtual s
    livenessTimeout: 300_000,
  };
  return { ...config, ...overrides };
}

/**
 * The NBD-front family (issue 11, scenario 12): requests go through the real
 * NBD server; writes of up to 64 blocks against a link payload limit of 4 or
 * 16 KiB (one request becomes up to 64 parts), with every fault kind.
 */
export function drawNbdConfig(rng: Rng, overrides: Partial<SimConfig> = {}): SimConfig {
  const base = drawConfig(rng);
  const config: SimConfig = {
    ...base,
    front: 'nbd',
    maxWriteBlocks: rng.pick([16, 64]),
    maxPayload: rng.pick([4096, 16384]),
  };
  // the payload limit must not be below a region (resync copies a region at once)
  config.regionSize = Math.min(config.regionSize, config.maxPayload);
  return { ...config, ...overrides };
}

/** Short human description of a config (for traces). */
export function describeConfig(c: SimConfig): string {
  return [
    `volumes=${c.volumes.map((v) => `${v.name}:${v.mode}:${v.size >= 2 ** 30 ? `${v.size / 2 ** 30}G` : `${v.size / 1024}K`}`).join(',')}`,
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
    ...(c.allocationMaps ? ['allocationMaps'] : []),
    `initialSync=${c.initialSync}`,
    `steps=${c.steps}`,
    `maxWrite=${c.maxWriteBlocks}`,
    `concurrency=${c.concurrency}`,
    `burst=${c.burst}`,
    `faults=${[...c.faults].join(',')}`,
    ...(c.bigZero > 0 ? [`bigZero=${c.bigZero}`] : []),
    ...(c.front === 'api' ? [] : [`front=${c.front}`]),
  ].join(' ');
}
