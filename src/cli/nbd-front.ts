/**
 * The fronts of the server commands: `--nbd HOST:PORT` (an {@link NbdServer}
 * over the command's exports) and, for primaries, `--admin HOST:PORT` with the
 * write-latency histograms of the NBD writes; both registered for shutdown.
 *
 * @module
 */
import createDebug from 'debug';
import { BlockMirrorError } from '../errors.js';
import type { NbdExport } from '../nbd/export.js';
import { NbdServer, type NbdExportLookup, type NbdServerOptions } from '../nbd/server.js';
import { LatencyHistogram } from '../admin/histogram.js';
import type { AdminMetrics } from '../admin/metrics.js';
import { createAdminServer, type AdminActions, type AdminServerOptions } from '../admin/server.js';
import type { VolumeOpObserver } from '../nbd/volume-backend.js';
import { formatHostPort, type HostPort, type PrimaryConfig } from './args.js';
import { packageVersion, type Resources } from './runtime.js';

const log = createDebug('blockmirror:cli');

/**
 * Listens on `at` with `exports` (a list, or a lookup of the current list)
 * and registers the server with `resources`. The default export is
 * `defaultExport`, else the first of the list. A listen failure closes the
 * server and is relabelled `NBD: …`.
 */
export async function serveNbd(
  exports: NbdExport[] | NbdExportLookup,
  at: HostPort,
  resources: Resources,
  options: Partial<NbdServerOptions> = {},
  defaultExport?: string,
): Promise<{ server: NbdServer; address: string }> {
  const server = new NbdServer({ ...options, exports, defaultExport: defaultExport ?? (Array.isArray(exports) ? exports[0]!.name : '') });
  server.on('error', (error, client) => log('nbd%s: %s', client === undefined ? '' : ` client ${client.id}`, error.message));
  let address: HostPort;
  try {
    address = await server.listen({ host: at.host, port: at.port });
  } catch (error) {
    await server.close();
    throw relabel(error, 'NBD');
  }
  resources.add('NBD server', () => server.close());
  return { server, address: formatHostPort(address) };
}

/** Adds which listener failed to a listen error. */
export function relabel(error: unknown, what: string): unknown {
  if (error instanceof BlockMirrorError && !error.message.includes(`(${what})`)) {
    return new BlockMirrorError(error.code, `${what}: ${error.message}`, { cause: error.cause, details: error.details });
  }
  return error;
}

/** Per-volume write-latency histograms and the observer that feeds them (NBD WRITE only). */
export function latencyRecorder(names: readonly string[]): { histograms: Map<string, LatencyHistogram>; observer: VolumeOpObserver } {
  const histograms = new Map<string, LatencyHistogram>(names.map((n) => [n, new LatencyHistogram()]));
  const observer: VolumeOpObserver = (info) => {
    if (info.op === 'write' && info.error === undefined) histograms.get(info.volume)?.observe(info.seconds);
  };
  return { histograms, observer };
}

/**
 * Starts a primary's `--admin` (status from `status()`, plus the NBD front's
 * address and connections) and `--nbd` (the exports `exports(observer)`
 * returns) when configured. Resolves with the `key=HOST:PORT` parts of the
 * `listening` line.
 */
export async function servePrimaryFronts(
  config: PrimaryConfig,
  resources: Resources,
  status: () => object,
  exports: (observer: VolumeOpObserver) => NbdExport[],
  security: { nbd?: Partial<NbdServerOptions>; admin?: Pick<AdminServerOptions, 'token' | 'tls' | 'openMetrics'> } = {},
  actions?: AdminActions,
): Promise<string[]> {
  const { histograms, observer } = latencyRecorder(config.volumes.map((v) => v.name));
  const metrics: AdminMetrics = { writeLatency: histograms };
  let nbd: { server: NbdServer; address: string } | undefined;
  const parts: string[] = [];
  if (config.admin !== undefined) {
    const source = { status: () => ({ ...status(), nbd: nbd === undefined ? null : { address: nbd.address, connections: nbd.server.stats().connections } }) };
    const admin = await createAdminServer({ host: config.admin.host, port: config.admin.port, source, metrics, version: packageVersion(), ...security.admin, ...(actions === undefined ? {} : { actions }) });
    resources.add('admin endpoint', () => admin.close());
    parts.push(`admin=${formatHostPort(admin.address)}`);
  }
  if (config.nbd !== undefined) {
    const served = await serveNbd(exports(observer), config.nbd, resources, security.nbd);
    nbd = served;
    metrics.nbd = () => served.server.stats();
    parts.unshift(`nbd=${served.address}`);
  }
  return parts;
}
