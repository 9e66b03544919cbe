/**
 * `blockmirror mirror`: a mirror target with file volumes, an optional
 * read-only NBD export of them and an optional admin endpoint. A volume
 * promoted with `--peer` on a mirror with `--nbd` is served in place: a
 * primary on its device and the mirror's state directory, its export
 * read-write.
 *
 * @module
 */
import createDebug from 'debug';
import { adminAccessOptions, adminToken, exposureWarnings, linkTransport, loadTls, nbdFrontOptions } from './security.js';
import { createAdminServer } from '../admin/server.js';
import { serveNbd } from './nbd-front.js';
import { primaryVolumeBackend, targetVolumeBackend } from '../nbd/volume-backend.js';
import type { NbdExport } from '../nbd/export.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { createMirrorTarget, type MirrorTarget, type TargetVolume } from '../replication/mirror-target.js';
import type { Primary } from '../replication/primary.js';
import type { Resolution } from '../replication/pair-state.js';
import { DEFAULT_DRAIN_TIMEOUT, formatHostPort, type HostPort, type MirrorConfig, type PrimaryConfig } from './args.js';
import { openPrimary, type OpenPrimaryInput } from './primary.js';
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

/** A volume promoted with `--peer` and served in place: its primary, its export and where it is served. */
interface ServedVolume {
  primary: Primary;
  export: NbdExport;
  /** `nbd://HOST:PORT/NAME`. */
  uri: string;
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
        ...(config.nbd === undefined ? [] : [{ what: 'NBD', at: config.nbd, authenticated: config.nbdTls === 'only', remedy: 'any host that reaches it can read the volumes (and write those promoted here); use --nbd-tls-only' }]),
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
    target.on('failback', (info) => {
      if (info.method === 'bitmap') say(io, `volume ${info.volume} failback resync=bitmap regions=${info.regions} primary=${info.node}`);
      else say(io, `volume ${info.volume} failback resync=checksum primary=${info.node} (${info.reason})`);
    });
    target.on('write-error', (info) => log('volume %s seq %d: write failed: %s', info.volume, info.seq, info.error.message));
    target.on('cycle-committed', (info) => say(io, `cycle ${info.to} committed volumes=${info.volumes.join(',')} bytes=${info.bytes} source=${info.source}`));
    target.on('cycle-error', (info) => log('cycle %d from %s failed: %s', info.to, info.source, info.error.message));

    // volumes promoted with --peer: served here by a primary each (closed after the fronts, before the target)
    const served = new Map<string, ServedVolume>();
    /** Volumes whose in-place primary is starting (a second promote of one is refused meanwhile). */
    const starting = new Set<string>();
    const promotedResources = new Resources();
    resources.add('promoted primaries', async () => {
      const errors = await promotedResources.closeAll();
      if (errors.length > 0) throw errors[0]!.error;
    });
    let nbdAddress: string | undefined;

    /**
     * Serves promoted volume `name` in place: a primary on its device and this
     * mirror's state directory (it continues the promoted generation), then
     * the target releases the volume and the NBD export turns read-write. A
     * failure before the release leaves the target hosting the volume.
     */
    const serveInPlace = async (name: string, peer: HostPort): Promise<ServedVolume> => {
      const spec = config.volumes.find((v) => v.name === name)!;
      const primaryConfig: PrimaryConfig = { volumes: [spec], stateDir, peer, mode: 'sync', drainTimeout: DEFAULT_DRAIN_TIMEOUT };
      if (config.heartbeatInterval !== undefined) primaryConfig.heartbeatInterval = config.heartbeatInterval;
      if (config.staleAfter !== undefined) primaryConfig.staleAfter = config.staleAfter;
      if (config.probation !== undefined) primaryConfig.probation = config.probation;
      const own = new Resources();
      const primaryInput: OpenPrimaryInput = { devices: new Map([[name, devices.get(name)!]]), resources: own, lineSuffix: ` volume=${name}` };
      if (secret !== undefined) primaryInput.secret = secret;
      if (tls !== undefined) primaryInput.tls = tls;
      let primary: Primary;
      try {
        primary = await openPrimary(primaryConfig, io, primaryInput);
        await target.release(name);
      } catch (error) {
        await own.closeAll();
        throw error;
      }
      const volume: ServedVolume = {
        primary,
        export: { name, description: `blockmirror primary volume ${name} (promoted here, sync)`, readOnly: false, backend: primaryVolumeBackend(primary.volume(name)) },
        uri: `nbd://${nbdAddress!}/${name}`,
      };
      served.set(name, volume);
      promotedResources.add(`primary ${name}`, async () => {
        const errors = await own.closeAll();
        if (errors.length > 0) throw errors[0]!.error;
      });
      await primary.connect();
      return volume;
    };

    /** Records the promotion (unless one of this run was not served yet) and serves the volume in place. */
    const promoteInPlace = async (volume: string, v: TargetVolume, force: boolean, peer: HostPort): Promise<object> => {
      // promoted earlier in this run but not served (a failed serve, or a promote without --peer): serve it now
      const result = v.status().role === 'promoted' ? { volume, generation: v.generations!.current, history: [...v.generations!.history] } : await target.promote(volume, { force });
      const forced = force ? ' (forced)' : '';
      let inPlace: ServedVolume;
      try {
        inPlace = await serveInPlace(volume, peer);
      } catch (error) {
        const err = toBlockMirrorError(error);
        const message = `volume ${volume} promoted generation=${result.generation}${forced} but not served here (${err.code}: ${err.message}); this mirror keeps it (read-only): promote --peer again once the cause is fixed, or restart this node as its primary`;
        warn(io, message);
        throw new BlockMirrorError(err.code, message, { cause: error, details: { volume, generation: result.generation } });
      }
      say(io, `volume ${volume} promoted generation=${result.generation}${forced} serving ${inPlace.uri} peer=${formatHostPort(peer)}`);
      return { ...result, nbd: inPlace.uri, peer: formatHostPort(peer) };
    };

    const parts = [`mirror=${formatHostPort(target.address)}`];
    if (config.admin !== undefined) {
      const actions = {
        resolve: async (volume: string, discard: Resolution) => {
          const inPlace = served.get(volume);
          if (inPlace !== undefined) return inPlace.primary.resolve(volume, discard);
          const result = await target.resolve(volume, discard);
          say(io, `volume ${volume} resolve ${discard}${result.generation === undefined ? ' (applied at the primary\'s next handshake)' : ` promoted generation=${result.generation}`}`);
          return result;
        },
        demote: async (volume: string, options: { timeout?: number }) => {
          const inPlace = served.get(volume);
          if (inPlace === undefined) {
            target.volume(volume);
            throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `volume ${volume} is a mirror's image here: demote it on its primary (a mirror demotes only a volume it serves in place after promote --peer)`, { details: { volume } });
          }
          const result = await inPlace.primary.demote(volume, options);
          say(io, `volume ${volume} demoted generation=${result.generation} (read-only here; promote the mirror next, then restart this node as its mirror)`);
          return result;
        },
        promote: async (volume: string, options: { force: boolean; peer?: HostPort }) => {
          if (options.peer === undefined) {
            const result = await target.promote(volume, options);
            say(io, `volume ${volume} promoted generation=${result.generation}${options.force ? ' (forced)' : ''} (restart this node as its primary${nbdAddress === undefined ? '' : ', or promote with --peer to serve it here'})`);
            return result;
          }
          if (nbdAddress === undefined) {
            throw new BlockMirrorError(
              'BM_ERR_INVALID_ARGUMENT',
              `promote --peer serves volume ${volume} here over NBD, but this mirror runs without --nbd: promote without --peer and restart this node as the volume's primary (or restart this mirror with --nbd); nothing was changed`,
              { details: { volume } },
            );
          }
          const v = target.volume(volume);
          if (served.has(volume) || starting.has(volume)) {
            throw new BlockMirrorError('BM_ERR_PROMOTE_REFUSED', `volume ${volume} cannot be promoted: it is promoted and ${served.has(volume) ? 'served' : 'being served'} here already; nothing was changed`, { details: { volume } });
          }
          starting.add(volume);
          try {
            return await promoteInPlace(volume, v, options.force, options.peer);
          } finally {
            starting.delete(volume);
          }
        },
      };
      const source = { status: () => mirrorStatus(target, served) };
      const admin = await createAdminServer({ host: config.admin.host, port: config.admin.port, source, version: packageVersion(), ...adminAccessOptions(config, tls, token), actions });
      resources.add('admin endpoint', () => admin.close());
      parts.push(`admin=${formatHostPort(admin.address)}`);
    }
    if (config.nbd !== undefined) {
      const readOnly = new Map<string, NbdExport>(
        target.volumes.map((v) => [
          v.name,
          {
            name: v.name,
            description: `blockmirror mirror target volume ${v.name} (read-only)`,
            readOnly: true,
            backend: targetVolumeBackend(v),
          },
        ]),
      );
      // a volume promoted in place is served read-write by its primary from then on (new connections)
      const lookup = (): NbdExport[] => config.volumes.map((v) => served.get(v.name)?.export ?? readOnly.get(v.name)!);
      const { address } = await serveNbd(lookup, config.nbd, resources, nbdFrontOptions(config, tls), config.volumes[0]!.name);
      nbdAddress = address;
      parts.splice(1, 0, `nbd=${address}`);
    }
    say(io, `listening ${parts.join(' ')}`);
    reason = await lifecycle.stopped;
  } catch (error) {
    reason = { kind: 'error', error };
  }
  return shutdown(io, lifecycle, resources, reason);
}

/**
 * The mirror's status, where each volume served in place shows its primary's
 * status (`role: 'primary'`, its replication mode and state, `nbd`: where it
 * is served) and that primary's peer is listed (with `volumes: [NAME]`).
 */
export function mirrorStatus(target: MirrorTarget, served: ReadonlyMap<string, { primary: Primary; uri: string }>): object {
  const status = target.status() as unknown as { peers: object[]; volumes: Record<string, object> };
  for (const [name, { primary, uri }] of served) {
    const own = primary.status();
    status.volumes[name] = { ...own.volumes[name], role: 'primary', nbd: uri };
    for (const peer of own.peers) status.peers.push({ ...peer, connections: peer.connections.filter((c) => c.status === 'open').length, volumes: [name] });
  }
  return status;
}
