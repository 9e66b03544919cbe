/**
 * Turns parsed CLI configuration into library options. This is the single
 * place where `blockmirror primary` flags become {@link PrimaryOptions}.
 *
 * @module
 */
import type { BlockDevice } from '../device/block-device.js';
import { BlockMirrorError } from '../errors.js';
import type { PrimaryOptions } from '../replication/primary.js';
import type { MirrorTargetOptions } from '../replication/mirror-target.js';
import type { MirrorConfig, PrimaryConfig, ServerConfig } from './args.js';
import type { Transport } from '../transport/transport.js';

/** What {@link primaryOptionsFrom} needs besides the flags. */
export interface PrimaryOptionsInput {
  /** Open devices by volume name (same order as `config.volumes`). */
  devices: ReadonlyMap<string, BlockDevice>;
  /** Shared secret (from `--secret-file`). */
  secret?: string;
  /** Reconnect backoff (the CLI uses the library default; the demo shortens it). */
  retryDelay?: { min: number; max: number };
  /** The node's state directory (the CLI: `--state-dir`, default beside the first volume). */
  stateDir?: string;
  /** The link's transport (the CLI: TLS with `--tls-*`, else the default TCP). */
  transport?: Transport;
}

/**
 * Builds the {@link PrimaryOptions} for `blockmirror primary` (and the demo)
 * from parsed flags. `waitForConnection` is false: the primary serves its
 * volumes while it (re)connects to the mirror.
 */
export function primaryOptionsFrom(config: PrimaryConfig, input: PrimaryOptionsInput): PrimaryOptions {
  const mode = config.mode;
  if (mode === 'cycle') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', '--mode cycle runs a cycle source, not a per-write primary');
  const options: PrimaryOptions = {
    peer: { host: config.peer.host, port: config.peer.port },
    volumes: config.volumes.map((v) => ({
      name: v.name,
      device: input.devices.get(v.name)!,
      mode: v.mode ?? mode,
      ...(config.initialSync === undefined ? {} : { initialSync: config.initialSync }),
    })),
    waitForConnection: false,
  };
  if (config.connections !== undefined) options.connections = config.connections;
  if (input.secret !== undefined) options.secret = input.secret;
  if (input.transport !== undefined) options.transport = input.transport;
  if (input.retryDelay !== undefined) options.retryDelay = input.retryDelay;
  linkTimers(config, options);
  if (config.journalDir !== undefined) options.journal = { dir: config.journalDir };
  if (input.stateDir !== undefined) options.stateDir = input.stateDir;
  if (config.resyncRate !== undefined) options.resync = { rateBytesPerSecond: config.resyncRate };
  if (config.noPayloadChecksum === true) options.payloadChecksum = false;
  return options;
}

/** Heartbeat timers from the flags shared by both commands. */
function linkTimers(config: ServerConfig, options: Pick<PrimaryOptions, 'heartbeatInterval' | 'staleAfter' | 'probation'>): void {
  if (config.heartbeatInterval !== undefined) options.heartbeatInterval = config.heartbeatInterval;
  if (config.staleAfter !== undefined) options.staleAfter = config.staleAfter;
  if (config.probation !== undefined) options.probation = config.probation;
}

/** Builds the {@link MirrorTargetOptions} for `blockmirror mirror`. */
export function mirrorTargetOptionsFrom(
  config: MirrorConfig,
  input: { devices: ReadonlyMap<string, BlockDevice>; secret?: string; stateDir?: string; transport?: Transport },
): MirrorTargetOptions {
  const options: MirrorTargetOptions = {
    listen: { host: config.listen.host, port: config.listen.port },
    volumes: config.volumes.map((v) => ({ name: v.name, device: input.devices.get(v.name)! })),
  };
  if (input.transport !== undefined) options.transport = input.transport;
  if (config.maxSessions !== undefined) options.maxSessions = config.maxSessions;
  if (input.stateDir !== undefined) {
    options.cycle = { dir: input.stateDir };
    // generations and the durable apply state of each volume survive a restart of the mirror
    options.stateDir = input.stateDir;
  }
  if (input.secret !== undefined) options.secret = input.secret;
  // heartbeats use UDP on the same port number as `listen`
  linkTimers(config, options);
  return options;
}
