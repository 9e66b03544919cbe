/**
 * `blockmirror mirror`: a mirror target with file volumes, an optional
 * read-only NBD export of them and an optional admin endpoint.
 *
 * @module
 */
import { mkdir } from 'node:fs/promises';
import createDebug from 'debug';
import { createAdminServer } from '../admin/server.js';
import { serveNbd } from './nbd-front.js';
import { targetVolumeBackend } from '../nbd/volume-backend.js';
import { createMirrorTarget } from '../replication/mirror-target.js';
import { BlockMirrorError } from '../errors.js';
import { formatHostPort, type MirrorConfig } from './args.js';
import { mirrorTargetOptionsFrom } from './options.js';
import { closeDevices, Lifecycle, openVolumes, packageVersion, readSecret, Resources, say, shutdown, type CliIo, type StopReason } from './runtime.js';

const log = createDebug('blockmirror:cli');

/** Runs `blockmirror mirror` until SIGINT/SIGTERM; resolves with the exit status. */
export async function runMirror(config: MirrorConfig, io: CliIo): Promise<number> {
  const lifecycle = new Lifecycle(io);
  const resources = new Resources();
  let reason: StopReason;
  try {
    const secret = config.secretFile === undefined ? undefined : await readSecret(config.secretFile);
    const devices = await openVolumes(config.volumes);
    resources.add('volumes', () => closeDevices(devices.values()));
    for (const v of config.volumes) say(io, `volume ${v.name} path=${v.path} size=${devices.get(v.name)!.size}`);

    const stateDir = config.stateDir ?? `${config.volumes[0]!.path}.mirror-state`;
    try {
      await mkdir(stateDir, { recursive: true });
    } catch (error) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `cannot create --state-dir ${stateDir}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    const input: { devices: typeof devices; secret?: string; stateDir: string } = { devices, stateDir };
    if (secret !== undefined) input.secret = secret;
    const target = await createMirrorTarget(mirrorTargetOptionsFrom(config, input));
    resources.add('mirror target', () => target.close());
    const sessions = new Set<string>();
    target.on('connection', (info) => {
      if (sessions.has(info.session)) return;
      sessions.add(info.session);
      say(io, `peer connected node=${info.node} address=${info.address.host}`);
    });
    target.on('connection-error', (error, address) => log('connection from %s failed: %s: %s', address.host, error.code, error.message));
    target.on('write-error', (info) => log('volume %s seq %d: write failed: %s', info.volume, info.seq, info.error.message));
    target.on('cycle-committed', (info) => say(io, `cycle ${info.to} committed volumes=${info.volumes.join(',')} bytes=${info.bytes} source=${info.source}`));
    target.on('cycle-error', (info) => log('cycle %d from %s failed: %s', info.to, info.source, info.error.message));

    const parts = [`mirror=${formatHostPort(target.address)}`];
    if (config.admin !== undefined) {
      const admin = await createAdminServer({ host: config.admin.host, port: config.admin.port, source: target, version: packageVersion() });
      resources.add('admin endpoint', () => admin.close());
      parts.push(`admin=${formatHostPort(admin.address)}`);
    }
    if (config.nbd !== undefined) {
      const exports = target.volumes.map((v) => ({
        name: v.name,
        description: `blockmirror mirror target volume ${v.name} (read-only)`,
        readOnly: true,
        backend: targetVolumeBackend(v),
      }));
      const { address } = await serveNbd(exports, config.nbd, resources);
      parts.splice(1, 0, `nbd=${address}`);
    }
    say(io, `listening ${parts.join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}
