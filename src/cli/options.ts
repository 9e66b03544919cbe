/**
 * Turns parsed CLI configuration into library options. This is the single
 * place where `blockmirror primary` flags become {@link PrimaryOptions}.
 *
 * @module
 */
import type { BlockDevice } from '../device/block-device.js';
import type { PrimaryOptions } from '../replication/primary.js';
import type { MirrorTargetOptions } from '../replication/mirror-target.js';
import type { MirrorConfig, PrimaryConfig } from './args.js';

/** What {@link primaryOptionsFrom} needs besides the flags. */
export interface PrimaryOptionsInput {
  /** Open devices by volume name (same order as `config.volumes`). */
  devices: ReadonlyMap<string, BlockDevice>;
  /** Shared secret (from `--secret-file`). */
  secret?: string;
  /** Reconnect backoff (the CLI uses the library default; the demo shortens it). */
  retryDelay?: { min: number; max: number };
}

/** Result of {@link primaryOptionsFrom}. */
export interface BuiltPrimaryOptions {
  options: PrimaryOptions;
  /** Flags that were given and validated but are not passed to the library yet (the feature is not in). */
  notWired: string[];
}

/**
 * Builds the {@link PrimaryOptions} for `blockmirror primary` (and the demo)
 * from parsed flags. `waitForConnection` is false: the primary serves its
 * volumes while it (re)connects to the mirror.
 */
export function primaryOptionsFrom(config: PrimaryConfig, input: PrimaryOptionsInput): BuiltPrimaryOptions {
  const options: PrimaryOptions = {
    peer: { host: config.peer.host, port: config.peer.port },
    volumes: config.volumes.map((v) => ({ name: v.name, device: input.devices.get(v.name)!, mode: v.mode ?? config.mode })),
    waitForConnection: false,
  };
  if (config.connections !== undefined) options.connections = config.connections;
  if (input.secret !== undefined) options.secret = input.secret;
  if (input.retryDelay !== undefined) options.retryDelay = input.retryDelay;
  const notWired: string[] = [];
  // Link health (issue 3): each TODO line below becomes `options.X = config.X;` once PrimaryOptions has X.
  if (config.heartbeatInterval !== undefined) notWired.push('--heartbeat-interval'); // TODO(issue 3): options.heartbeatInterval = config.heartbeatInterval;
  if (config.staleAfter !== undefined) notWired.push('--stale-after'); // TODO(issue 3): options.staleAfter = config.staleAfter;
  if (config.probation !== undefined) notWired.push('--probation'); // TODO(issue 3): options.probation = config.probation;
  if (config.journalDir !== undefined) options.journal = { dir: config.journalDir };
  return { options, notWired };
}

/** Builds the {@link MirrorTargetOptions} for `blockmirror mirror`. */
export function mirrorTargetOptionsFrom(
  config: MirrorConfig,
  input: { devices: ReadonlyMap<string, BlockDevice>; secret?: string },
): MirrorTargetOptions {
  const options: MirrorTargetOptions = {
    listen: { host: config.listen.host, port: config.listen.port },
    volumes: config.volumes.map((v) => ({ name: v.name, device: input.devices.get(v.name)! })),
  };
  if (input.secret !== undefined) options.secret = input.secret;
  // Heartbeats (issue 3) will answer on UDP at the same port number as `listen`: no extra flag.
  return options;
}
