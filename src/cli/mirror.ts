/**
 * `blockmirror mirror`: a mirror target with file volumes, an optional
 * read-only NBD export of them and an optional admin endpoint.
 *
 * @module
 */
import createDebug from 'debug';
import { adminAccessOptions, adminToken, exposureWarnings, linkTransport, loadTls, nbdFrontOptions } from './security.js';
import { createAdminServer } from '../admin/server.js';
import { serveNbd } from './nbd-front.js';
import { targetVolumeBackend } from '../nbd/volume-backend.js';
import { createMirrorTarget, type MirrorTarget } from '../replication/mirror-target.js';
import type { Resolution } from '../replication/pair-state.js';
import { formatHostPort, type MirrorConfig } from './args.js';
import { mirrorTargetOptionsFrom } from './options.js';
import { ensureStateDir, stateDirOf } from './state-dir.js';
import { trackAllocation } from './allocation.js';
import { closeDevices, logNbdVolumes, Lifecycle, openVolumes, packageVersion, readSecret, Resources, say, shutdown, warn, type CliIo, type StopReason } from './runtime.js';

const log = createDebug('blockmirror:cli');

/**
 * One line per event about the primaries (not only under `DEBUG`): on stdout
 * `peer connected …`, `peer disconnected …`, `link STATE node=… reason=…`,
 * `peer forgotten …`; on stderr a warning per refused primary (busy,
 * mismatch, split brain, auth failure, settings…) with its address — the
 * same refusal of the same node is reported once until it is accepted or
 * refused for another reason (a refused primary retries every few seconds).
 */
export function logPeerEvents(target: MirrorTarget, io: CliIo): void {
  const connected = new Set<string>();
  const refusals = new Map<string, string>();
  target.on('connection', (info) => {
    if (connected.has(info.session)) return;
    connected.add(info.session);
    refusals.delete(info.node);
    say(io, `peer connected node=${info.node} address=${formatHostPort(info.address)}`);
  });
  target.on('peer-disconnected', (info) => {
    connected.delete(info.session);
    say(io, `peer disconnected node=${info.node} address=${info.address}${info.error === undefined ? '' : ` code=${info.error.code} reason=${JSON.stringify(info.error.message)}`}`);
  });
  target.on('peer-link', (info) => say(io, `link ${info.state} node=${info.node} address=${info.address} reason=${info.reason}`));
  target.on('peer-forgotten', (info) => say(io, `peer forgotten node=${info.node} address=${info.address} (gone, owns no volume)`));
  target.on('refused', ({ address, node, error }) => {
    // a handshake the peer itself abandoned (it failed on another connection) refuses nothing
    if (error.code === 'BM_ERR_CONNECTION_CLOSED') return;
    const who = node ?? address.host;
    if (refusals.get(who) === error.code) return;
    if (refusals.size >= 1024) refusals.clear();
    refusals.set(who, error.code);
    warn(io, `refused primary node=${node ?? '-'} address=${formatHostPort(address)}: ${error.code}: ${error.message}`);
  });
}

/** Runs `blockmirror mirror` until SIGINT/SIGTERM; resolves with the exit status. */
export async function runMirror(config: MirrorConfig, io: CliIo): Promise<number> {
  const lifecycle = new Lifecycle(io);
  const resources = new Resources();
  let reason: StopReason;
  try {
    const secret = config.secretFile === undefined ? undefined : await readSecret(config.secretFile);
    const tls = await loadTls(config.tls);
    const token = await adminToken(config);
    exposureWarnings(
      io,
      [
        { what: 'mirror', at: config.listen, authenticated: secret !== undefined || tls !== undefined, remedy: 'any host that reaches it can write the volumes; use --secret-file or --tls-*' },
        ...(config.nbd === undefined ? [] : [{ what: 'NBD', at: config.nbd, authenticated: config.nbdTls === 'only', remedy: 'any host that reaches it can read the volumes; use --nbd-tls-only' }]),
      ],
      config,
    );
    const created = new Set<string>();
    const devices = await openVolumes(config.volumes, created);
    resources.add('volumes', () => closeDevices(devices.values()));
    await trackAllocation(devices, config.volumes, { stateDir: stateDirOf(config, 'mirror'), created, scanZeros: config.scanZeros === true, io });
    logNbdVolumes(devices, io);
    for (const v of config.volumes) say(io, `volume ${v.name} path=${v.path} size=${devices.get(v.name)!.size}`);

    const stateDir = stateDirOf(config, 'mirror');
    await ensureStateDir(stateDir);
    const input: Parameters<typeof mirrorTargetOptionsFrom>[1] = { devices, stateDir };
    if (secret !== undefined) input.secret = secret;
    const transport = linkTransport(tls);
    if (transport !== undefined) input.transport = transport;
    const target = await createMirrorTarget(mirrorTargetOptionsFrom(config, input));
    resources.add('mirror target', () => target.close());
    say(io, `node ${target.nodeId}`);
    logPeerEvents(target, io);
    target.on('connection-error', (error, address) => log('connection from %s failed: %s: %s', address.host, error.code, error.message));
    target.on('disk-state', (info) => say(io, `volume ${info.volume} disk ${info.disk} (was ${info.previous})`));
    target.on('write-error', (info) => log('volume %s seq %d: write failed: %s', info.volume, info.seq, info.error.message));
    target.on('cycle-committed', (info) => say(io, `cycle ${info.to} committed volumes=${info.volumes.join(',')} bytes=${info.bytes} source=${info.source}`));
    target.on('cycle-error', (info) => log('cycle %d from %s failed: %s', info.to, info.source, info.error.message));

    const parts = [`mirror=${formatHostPort(target.address)}`];
    if (config.admin !== undefined) {
      const actions = {
        resolve: async (volume: string, discard: Resolution) => {
          const result = await target.resolve(volume, discard);
          say(io, `volume ${volume} resolve ${discard}${result.generation === undefined ? ' (applied at the primary\'s next handshake)' : ` promoted generation=${result.generation}`}`);
          return result;
        },
        promote: async (volume: string, options: { force: boolean }) => {
          const result = await target.promote(volume, options);
          say(io, `volume ${volume} promoted generation=${result.generation}${options.force ? ' (forced)' : ''} (restart this node as its primary)`);
          return result;
        },
      };
      const admin = await createAdminServer({ host: config.admin.host, port: config.admin.port, source: target, version: packageVersion(), ...adminAccessOptions(config, tls, token), actions });
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
      const { address } = await serveNbd(exports, config.nbd, resources, nbdFrontOptions(config, tls));
      parts.splice(1, 0, `nbd=${address}`);
    }
    say(io, `listening ${parts.join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}
