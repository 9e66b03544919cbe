/**
 * `blockmirror primary`: a primary with file volumes mirrored to `--peer`,
 * served over NBD, with an optional admin endpoint.
 *
 * @module
 */
import { adminAccessOptions, adminToken, exposureWarnings, linkTransport, loadTls, nbdFrontOptions, primaryListeners, type TlsMaterial } from './security.js';
import createDebug from 'debug';
import { CONFIGURATION_REFUSALS, type BlockMirrorError, type ErrorCode } from '../errors.js';
import type { BlockDevice } from '../device/block-device.js';
import type { NbdExport } from '../nbd/export.js';
import { primaryVolumeBackend, type VolumeOpObserver } from '../nbd/volume-backend.js';
import { createPrimary, type Primary } from '../replication/primary.js';
import type { Resolution } from '../replication/pair-state.js';
import { formatHostPort, type PrimaryConfig } from './args.js';
import { servePrimaryFronts } from './nbd-front.js';
import { OperationProgress } from './operation-progress.js';
import { primaryOptionsFrom } from './options.js';
import { primaryNodeId, stateDirOf } from './state-dir.js';
import { trackAllocation } from './allocation.js';
import {
  closeDevices,
  logNbdVolumes,
  Lifecycle,
  openVolumes,
  readSecret,
  Resources,
  say,
  shutdown,
  warn,
  type CliIo,
  type StopReason,
} from './runtime.js';

const log = createDebug('blockmirror:cli');

/**
 * Connection errors after which retrying cannot help: the primary exits with
 * them. Split brain is not among them: the primary keeps serving its volumes
 * (their state says `split-brain`) until someone resolves it.
 */
export const FATAL_PEER_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([...CONFIGURATION_REFUSALS].filter((code) => code !== 'BM_ERR_SPLIT_BRAIN'));

/** NBD exports (read-write, export name = volume name) of a primary's volumes. */
export function primaryExports(primary: Primary, observer?: VolumeOpObserver): NbdExport[] {
  return primary.volumes.map((v) => ({
    name: v.name,
    description: `blockmirror primary volume ${v.name} (${v.mode})`,
    readOnly: false,
    backend: primaryVolumeBackend(v, observer === undefined ? {} : { observer }),
  }));
}

/** What {@link openPrimary} needs besides the flags. */
export interface OpenPrimaryInput {
  /** Open devices by volume name (those of `config.volumes` are served). */
  devices: ReadonlyMap<string, BlockDevice>;
  /** Shared secret (from `--secret-file`). */
  secret?: string;
  /** The `--tls-*` material: the link to the mirror over TLS. */
  tls?: TlsMaterial;
  /** Where the primary's `primary` and `progress` resources are registered (closed in reverse order). */
  resources: Resources;
  /**
   * A connection error after which retrying cannot help ({@link FATAL_PEER_ERRORS}).
   * Absent: a warning is printed (once per code) and the primary keeps
   * serving its volumes and retrying, as for any other error.
   */
  onFatal?: (error: BlockMirrorError) => void;
  /** Appended to the `link …` and `mirror … not reachable` lines (e.g. ` volume=db` for a primary serving one volume of a mirror process). */
  lineSuffix?: string;
}

/**
 * Starts a primary the way `blockmirror primary` does, on devices already
 * open: the node id and pairing state from the state directory
 * (`config.stateDir`, default beside the first volume file), the flags turned
 * into options by {@link primaryOptionsFrom}, a line per event on `io`.
 * Contacts nobody: call `primary.connect()` once the fronts are bound. Its
 * close (drained for at most `config.drainTimeout`, not drained after a
 * fatal error) is registered with `input.resources`.
 */
export async function openPrimary(config: PrimaryConfig, io: CliIo, input: OpenPrimaryInput): Promise<Primary> {
  const { resources } = input;
  const peer = formatHostPort(config.peer);
  const suffix = input.lineSuffix ?? '';
  let fatal = false;
  // the state directory keeps the node id, each volume's pairing state and (without --journal) its bitmap
  const nodeId = await primaryNodeId(config);
  const options: Parameters<typeof primaryOptionsFrom>[1] = { devices: input.devices, stateDir: stateDirOf(config, 'primary') };
  if (input.secret !== undefined) options.secret = input.secret;
  const transport = linkTransport(input.tls);
  if (transport !== undefined) options.transport = transport;
  // the mirror is contacted only once every listener is bound: a start
  // that fails on a port in use claims nothing on the mirror
  const primary = await createPrimary({ ...primaryOptionsFrom(config, options), nodeId, autoConnect: false });
  resources.add('primary', () => primary.close({ drain: !fatal, timeout: config.drainTimeout }));
  say(io, `node ${nodeId}`);
  for (const v of primary.volumes) {
    const s = v.status();
    if (s.journalEntries > 0) say(io, `journal replay volume=${v.name} records=${s.pendingRequests} bytes=${s.pendingBytes}`);
  }

  const warned = new Set<string>();
  primary.on('link', (state) => {
    if (state === 'up') warned.clear();
    say(io, `link ${state} peer=${peer}${suffix}`);
  });
  primary.on('connect-error', (error) => {
    if (FATAL_PEER_ERRORS.has(error.code) && input.onFatal !== undefined) {
      fatal = true;
      input.onFatal(error);
      return;
    }
    log('connect to %s failed: %s', peer, error.message);
    if (warned.has(error.code)) return;
    warned.add(error.code);
    warn(io, `mirror ${peer} not reachable (${error.code}: ${error.message}); retrying${suffix}`);
  });
  primary.on('mirror-error', (info) => log('volume %s seq %d: mirror failed: %s', info.volume, info.seq, info.error.message));
  primary.on('volume-state', (info) => log('volume %s: %s', info.volume, info.state));
  const progress = new OperationProgress(io.stderr);
  resources.add('progress', async () => progress.close());
  primary.on('progress', (info) => {
    const label = `${info.operation} ${info.volume}`;
    if (info.finished) progress.finish(label);
    else progress.report(label, info.done, info.total);
  });
  primary.on('journal-replayed', (info) => {
    say(io, `journal replay done volume=${info.volume} records=${info.records} bytes=${info.bytes} ms=${Math.round(info.durationMs)}`);
  });
  primary.on('resync-done', (info) => {
    progress.finish(`resync ${info.volume}`);
    say(io, `resync done volume=${info.volume} bytes=${info.bytesSent} zero=${info.zeroBytesSent} regions=${info.regionsSent}/${info.regions} ms=${Math.round(info.progress.elapsedMs)}`);
  });
  primary.on('failback', (info) => {
    if (info.method === 'bitmap') say(io, `failback volume=${info.volume} resync=bitmap regions=${info.regions}/${info.regionsTotal} peer-regions=${info.peerRegions}`);
    else say(io, `failback volume=${info.volume} resync=checksum regions=${info.regionsTotal}/${info.regionsTotal} (the mirror offered no usable write-intent bitmap)`);
  });
  primary.on('peer-disk', (info) => say(io, `volume ${info.volume} peer disk ${info.disk} (was ${info.previous})`));
  primary.on('resync-resumed', (info) => say(io, `resync resumed volume=${info.volume} bytes=${info.bytes} (interrupted earlier; only what is left is sent)`));
  primary.on('resync-error', (info) => {
    progress.finish(`resync ${info.volume}`, true);
    warn(io, `resync of ${info.volume} failed (${info.error.code}: ${info.error.message}); retried when the link is up`);
  });
  return primary;
}

/** Runs `blockmirror primary` until SIGINT/SIGTERM or a fatal peer error; resolves with the exit status. */
export async function runPrimary(config: PrimaryConfig, io: CliIo): Promise<number> {
  const lifecycle = new Lifecycle(io);
  const resources = new Resources();
  const peer = formatHostPort(config.peer);
  let reason: StopReason;
  try {
    const secret = config.secretFile === undefined ? undefined : await readSecret(config.secretFile);
    const tls = await loadTls(config.tls);
    const token = await adminToken(config);
    exposureWarnings(io, primaryListeners(config), config);
    const created = new Set<string>();
    const devices = await openVolumes(config.volumes, created);
    resources.add('volumes', () => closeDevices(devices.values()));
    await trackAllocation(devices, config.volumes, { stateDir: stateDirOf(config, 'primary'), created, scanZeros: config.scanZeros === true, io });
    logNbdVolumes(devices, io);
    for (const v of config.volumes) say(io, `volume ${v.name} path=${v.path} size=${devices.get(v.name)!.size} mode=${config.mode}`);

    const input: OpenPrimaryInput = { devices, resources, onFatal: (error) => lifecycle.fail(error) };
    if (secret !== undefined) input.secret = secret;
    if (tls !== undefined) input.tls = tls;
    const primary = await openPrimary(config, io, input);

    const actions = {
      resolve: (volume: string, discard: Resolution) => primary.resolve(volume, discard),
      demote: async (volume: string, options: { timeout?: number }) => {
        const result = await primary.demote(volume, options);
        say(io, `volume ${volume} demoted generation=${result.generation} (read-only here; promote the mirror next)`);
        return result;
      },
    };
    const parts = await servePrimaryFronts(
      config,
      resources,
      () => primary.status(),
      (observer) => primaryExports(primary, observer),
      { nbd: nbdFrontOptions(config, tls), admin: adminAccessOptions(config, tls, token) },
      actions,
    );
    await primary.connect();
    say(io, `listening ${[...parts, `peer=${peer}`].join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}
