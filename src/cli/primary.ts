/**
 * `blockmirror primary`: a primary with file volumes mirrored to `--peer`,
 * served over NBD, with an optional admin endpoint.
 *
 * @module
 */
import createDebug from 'debug';
import { LatencyHistogram } from '../admin/histogram.js';
import type { AdminMetrics } from '../admin/metrics.js';
import { createAdminServer } from '../admin/server.js';
import type { ErrorCode } from '../errors.js';
import type { NbdExport } from '../nbd/export.js';
import { NbdServer } from '../nbd/server.js';
import { primaryVolumeBackend, type VolumeOpObserver } from '../nbd/volume-backend.js';
import { createPrimary, type Primary } from '../replication/primary.js';
import { formatHostPort, type PrimaryConfig } from './args.js';
import { relabel } from './mirror.js';
import { primaryOptionsFrom } from './options.js';
import {
  closeDevices,
  Lifecycle,
  openVolumes,
  packageVersion,
  readSecret,
  Resources,
  say,
  shutdown,
  warn,
  type CliIo,
  type StopReason,
} from './runtime.js';

const log = createDebug('blockmirror:cli');

/** Connection errors after which retrying cannot help: the primary exits with them. */
export const FATAL_PEER_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'BM_ERR_VOLUME_MISMATCH',
  'BM_ERR_UNKNOWN_VOLUME',
  'BM_ERR_AUTH_FAILED',
  'BM_ERR_PROTOCOL_VERSION',
  'BM_ERR_NOT_SUPPORTED',
]);

/** Per-volume write-latency histograms and the observer that feeds them (NBD WRITE only). */
export function latencyRecorder(names: readonly string[]): { histograms: Map<string, LatencyHistogram>; observer: VolumeOpObserver } {
  const histograms = new Map<string, LatencyHistogram>(names.map((n) => [n, new LatencyHistogram()]));
  const observer: VolumeOpObserver = (info) => {
    if (info.op === 'write' && info.error === undefined) histograms.get(info.volume)?.observe(info.seconds);
  };
  return { histograms, observer };
}

/** NBD exports (read-write, export name = volume name) of a primary's volumes. */
export function primaryExports(primary: Primary, observer?: VolumeOpObserver): NbdExport[] {
  return primary.volumes.map((v) => ({
    name: v.name,
    description: `blockmirror primary volume ${v.name} (${v.mode})`,
    readOnly: false,
    backend: primaryVolumeBackend(v, observer === undefined ? {} : { observer }),
  }));
}

/** Runs `blockmirror primary` until SIGINT/SIGTERM or a fatal peer error; resolves with the exit status. */
export async function runPrimary(config: PrimaryConfig, io: CliIo): Promise<number> {
  const lifecycle = new Lifecycle(io);
  const resources = new Resources();
  const peer = formatHostPort(config.peer);
  let fatal = false;
  let reason: StopReason;
  try {
    const secret = config.secretFile === undefined ? undefined : await readSecret(config.secretFile);
    const devices = await openVolumes(config.volumes);
    resources.add('volumes', () => closeDevices(devices.values()));
    for (const v of config.volumes) say(io, `volume ${v.name} path=${v.path} size=${devices.get(v.name)!.size} mode=${config.mode}`);

    const input: Parameters<typeof primaryOptionsFrom>[1] = { devices };
    if (secret !== undefined) input.secret = secret;
    const options = primaryOptionsFrom(config, input);
    const primary = await createPrimary(options);
    resources.add('primary', () => primary.close({ drain: !fatal, timeout: config.drainTimeout }));

    const warned = new Set<string>();
    primary.on('link', (state) => {
      if (state === 'up') warned.clear();
      say(io, `link ${state} peer=${peer}`);
    });
    primary.on('connect-error', (error) => {
      if (FATAL_PEER_ERRORS.has(error.code)) {
        fatal = true;
        lifecycle.fail(error);
        return;
      }
      log('connect to %s failed: %s', peer, error.message);
      if (warned.has(error.code)) return;
      warned.add(error.code);
      warn(io, `mirror ${peer} not reachable (${error.code}: ${error.message}); retrying`);
    });
    primary.on('mirror-error', (info) => log('volume %s seq %d: mirror failed: %s', info.volume, info.seq, info.error.message));
    primary.on('volume-state', (info) => log('volume %s: %s', info.volume, info.state));

    const { histograms, observer } = latencyRecorder(config.volumes.map((v) => v.name));
    const metrics: AdminMetrics = { writeLatency: histograms };
    let nbd: NbdServer | undefined;
    let nbdAddress: string | undefined;
    const parts: string[] = [];
    if (config.admin !== undefined) {
      const source = {
        status: () => ({
          ...primary.status(),
          nbd: nbd === undefined ? null : { address: nbdAddress, connections: nbd.stats().connections },
        }),
      };
      const admin = await createAdminServer({ host: config.admin.host, port: config.admin.port, source, metrics, version: packageVersion() });
      resources.add('admin endpoint', () => admin.close());
      parts.push(`admin=${formatHostPort(admin.address)}`);
    }
    if (config.nbd !== undefined) {
      const server = new NbdServer({ exports: primaryExports(primary, observer), defaultExport: config.volumes[0]!.name });
      server.on('error', (error, client) => log('nbd%s: %s', client === undefined ? '' : ` client ${client.id}`, error.message));
      let address: { host: string; port: number };
      try {
        address = await server.listen({ host: config.nbd.host, port: config.nbd.port });
      } catch (error) {
        await server.close();
        throw relabel(error, 'NBD');
      }
      resources.add('NBD server', () => server.close());
      nbd = server;
      nbdAddress = formatHostPort(address);
      metrics.nbd = () => server.stats();
      parts.unshift(`nbd=${nbdAddress}`);
    }
    say(io, `listening ${[...parts, `peer=${peer}`].join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}
