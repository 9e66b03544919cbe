/**
 * `blockmirror primary --mode cycle`: file volumes as layered volumes,
 * frozen together every `--cycle-interval` and copied to `--peer` (a
 * `blockmirror mirror`), served over NBD, with an optional admin endpoint.
 *
 * @module
 */
import { adminAccessOptions, adminToken, exposureWarnings, linkTransport, loadTls, nbdFrontOptions, primaryListeners } from './security.js';
import { mkdir } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import createDebug from 'debug';
import { createCycleSource, type CycleSourceOptions } from '../cycle/cycle-runner.js';
import { LayeredVolume } from '../cycle/layered-volume.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { cycleVolumeBackend } from '../nbd/volume-backend.js';
import { formatHostPort, type PrimaryConfig } from './args.js';
import { servePrimaryFronts } from './nbd-front.js';
import { OperationProgress } from './operation-progress.js';
import { FATAL_PEER_ERRORS } from './primary.js';
import { primaryNodeId, stateDirOf } from './state-dir.js';
import { trackAllocation } from './allocation.js';
import { closeDevices, logNbdVolumes, Lifecycle, openVolumes, readSecret, Resources, say, shutdown, warn, type CliIo, type StopReason } from './runtime.js';

const log = createDebug('blockmirror:cli');

/** Cycle transfers of at least this many bytes show progress on stderr. */
const PROGRESS_MIN_BYTES = 4 * 1024 * 1024;

/** Runs `blockmirror primary --mode cycle` until SIGINT/SIGTERM or a fatal peer error; resolves with the exit status. */
export async function runCyclePrimary(config: PrimaryConfig, io: CliIo): Promise<number> {
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
    if (config.journalDir !== undefined) await makeDir(config.journalDir);

    const layered: Array<{ name: string; volume: LayeredVolume }> = [];
    resources.add('layered volumes', async () => {
      for (const { volume } of layered) await volume.close();
    });
    for (const spec of config.volumes) {
      const device = devices.get(spec.name)!;
      try {
        // a volume on an NBD server has no file beside which to keep the layers: --journal DIR (required for it), named after the volume
        // (a file volume sits behind its allocation map: its layers are named after the file, beside it or in --journal)
        const where =
          spec.nbd === undefined
            ? { dir: config.journalDir ?? dirname(spec.path), name: basename(spec.path) }
            : config.journalDir === undefined
              ? {}
              : { dir: config.journalDir, name: spec.name };
        const volume = await LayeredVolume.open(device, where);
        layered.push({ name: spec.name, volume });
        say(io, `volume ${spec.name} path=${spec.path} size=${device.size} mode=cycle layers=${volume.dir}`);
      } catch (error) {
        const err = toBlockMirrorError(error);
        throw new BlockMirrorError(err.code, `volume ${spec.name}: ${err.message}`, { cause: error, details: err.details });
      }
    }

    const nodeId = await primaryNodeId(config, 'cycle-source');
    // the mirror is contacted only once every listener here is bound
    const options: CycleSourceOptions = {
      volumes: layered,
      targets: [{ address: config.peer, name: peer }],
      interval: config.cycleInterval ?? 60000,
      waitForConnection: false,
      nodeId,
      autoConnect: false,
      autoStart: false,
    };
    if (config.journalDir !== undefined) options.stateDir = config.journalDir;
    if (secret !== undefined) options.secret = secret;
    const transport = linkTransport(tls);
    if (transport !== undefined) options.transport = transport;
    if (config.bandwidth !== undefined) options.bandwidth = config.bandwidth;
    if (config.noPayloadChecksum === true) options.payloadChecksum = false;
    const source = await createCycleSource(options);
    resources.add('cycle source', () => source.close());
    say(io, `node ${nodeId}`);

    const warned = new Set<string>();
    source.on('target-link', ({ state, error }) => {
      if (error !== undefined && FATAL_PEER_ERRORS.has(error.code)) {
        lifecycle.fail(error);
        return;
      }
      if (state === 'up') warned.clear();
      if (state === 'up' || state === 'down') say(io, `link ${state} peer=${peer}`);
      if (state === 'down' && error !== undefined && !warned.has(error.code)) {
        warned.add(error.code);
        warn(io, `mirror ${peer} not reachable (${error.code}: ${error.message}); retrying`);
      }
    });
    const progress = new OperationProgress(io.stderr);
    resources.add('progress', async () => progress.close());
    source.on('transfer-progress', ({ cycle, done, total }) => {
      if (total >= PROGRESS_MIN_BYTES) progress.report(`cycle ${cycle} to ${peer}`, done, total);
    });
    source.on('target-committed', ({ cycle, stats, durationMs }) => {
      progress.finish(`cycle ${cycle} to ${peer}`);
      say(io, `cycle ${cycle} committed peer=${peer} bytes=${stats.wireBytes} ms=${Math.round(durationMs)}`);
    });
    source.on('target-error', ({ cycle, error }) => {
      progress.finish(`cycle ${cycle} to ${peer}`, true);
      if (FATAL_PEER_ERRORS.has(error.code)) lifecycle.fail(error);
      else warn(io, `cycle ${cycle} to ${peer} failed (${error.code}: ${error.message}); the mirror keeps its previous freeze, retrying`);
    });
    source.on('error', (error) => warn(io, `cycle: ${error.code}: ${error.message}`));
    source.on('merged', (info) => log('merged into the bases: %o', info));

    const parts = await servePrimaryFronts(config, resources, () => source.status(), (observer) =>
      layered.map(({ name, volume }) => ({
        name,
        description: `blockmirror primary volume ${name} (cycle)`,
        readOnly: false,
        backend: cycleVolumeBackend(name, volume, { observer }),
      })),
      { nbd: nbdFrontOptions(config, tls), admin: adminAccessOptions(config, tls, token) },
    );
    await source.connect(false);
    source.start();
    say(io, `listening ${[...parts, `peer=${peer}`].join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}

async function makeDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `cannot create --journal ${dir}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}
