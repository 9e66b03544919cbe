/**
 * The document served by the admin endpoint's `GET /status`: one shape for
 * primaries and mirror targets.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';

/** One peer in {@link AdminStatus.peers}. */
export interface AdminPeerStatus {
  /** `host:port` of the mirror target (primary), or the primary's address (target). */
  address: string;
  /** `up`, `down`, `connecting` (and `probation` once link health is in). */
  link: string;
  /** Peer node id, when known. */
  node?: string;
  [key: string]: unknown;
}

/** One volume in {@link AdminStatus.volumes}. */
export interface AdminVolumeStatus {
  /** `sync`, `async`, `local` on a primary; `target` on a mirror target. */
  mode: string;
  /**
   * Primary: the target is identical as far as the primary knows (nothing
   * pending, and both images `up-to-date`).
   * Target: its image is `up-to-date` and a primary is connected and
   * mirroring into it (the target cannot see what the primary has not sent
   * yet: ask the primary's endpoint for the truth). A cycle target: a cycle
   * source is connected and the volume holds one of its freeze images.
   */
  inSync: boolean;
  /** Primary: bytes written locally and not yet acknowledged by the target. Target: always 0. */
  pendingBytes: number;
  /**
   * Primary: `in-sync`, `replicating`, `lagging`, `local`.
   * Target: `mirroring` (a primary is connected), `disconnected` (it holds a
   * primary's data, none is connected now), `unclaimed` (never paired).
   */
  state: string;
  /** Size in bytes. */
  size: number;
  /** Primary: bytes the target acknowledged. Target: bytes applied from the primary. */
  replicatedBytes: number;
  /** Primary: mirror failures seen (each retried). Target: requests it failed to apply. */
  mirrorErrors: number;
  [key: string]: unknown;
}

/** The `GET /status` document. Extra fields of the source's status are kept. */
export interface AdminStatus {
  /** `primary` or `target`. */
  role: string;
  /** This node's id. */
  node?: string;
  peers: AdminPeerStatus[];
  volumes: Record<string, AdminVolumeStatus>;
  [key: string]: unknown;
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

function bad(message: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `status source: ${message}`);
}

/**
 * Maps a status object to the {@link AdminStatus} shape.
 *
 * - `role: 'primary'` (`PrimaryStatus`): already in shape; fields are
 *   kept as they are.
 * - `role: 'target'` (`MirrorTargetStatus`): each volume gets
 *   `mode: 'target'`, `inSync` = its image is up-to-date and a primary is
 *   connected to it (a cycle target: a cycle source is connected),
 *   `pendingBytes: 0`, `state` as documented on {@link AdminVolumeStatus},
 *   `replicatedBytes` = `bytesWritten`, `mirrorErrors` = `errors`.
 * - `role: 'cycle-source'` (`CycleSourceStatus`): becomes a primary's
 *   status with `mode: 'cycle'` volumes (see `cycleSourceStatus` below).
 * - anything else: must carry `role`, `peers` and `volumes`; missing numeric
 *   fields become 0.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when the object lacks `role`, `peers` or `volumes`.
 */
export function normalizeStatus(raw: unknown): AdminStatus {
  if (!isObj(raw)) throw bad('status() did not return an object');
  const { role, peers, volumes } = raw;
  if (typeof role !== 'string') throw bad('status has no role');
  if (role === 'cycle-source' && isObj(volumes)) return cycleSourceStatus(raw, volumes);
  if (!Array.isArray(peers)) throw bad('status has no peers array');
  if (!isObj(volumes)) throw bad('status has no volumes object');

  const outPeers: AdminPeerStatus[] = peers.map((p: unknown) => {
    const peer = isObj(p) ? p : {};
    return { ...peer, address: String(peer.address ?? ''), link: String(peer.link ?? 'unknown') };
  });

  const outVolumes: Record<string, AdminVolumeStatus> = {};
  for (const [name, v] of Object.entries(volumes)) {
    const vol = isObj(v) ? v : {};
    if (role === 'target' && vol.mode === undefined) {
      const cycle = isObj(vol.cycle) ? vol.cycle : {};
      const connected = num(vol.connections) > 0 || typeof cycle.source === 'string';
      // it holds a primary's data (a lineage, also from before a restart) or a cycle image
      const owned = typeof vol.primary === 'string' || typeof vol.generation === 'string' || num(cycle.freeze) > 0 || cycle.seeding === true;
      // per-write mirroring: the target's own disk state says whether its image is a copy
      const perWrite = typeof cycle.source !== 'string' && typeof vol.inSync === 'boolean';
      outVolumes[name] = {
        ...vol,
        mode: 'target',
        inSync: perWrite ? vol.inSync === true : owned && connected,
        pendingBytes: 0,
        state: connected ? 'mirroring' : owned ? 'disconnected' : 'unclaimed',
        size: num(vol.size),
        replicatedBytes: num(vol.bytesWritten) + num(cycle.bytesReceived),
        mirrorErrors: num(vol.errors),
      };
    } else {
      outVolumes[name] = {
        ...vol,
        mode: String(vol.mode ?? 'unknown'),
        inSync: vol.inSync === true,
        pendingBytes: num(vol.pendingBytes),
        state: String(vol.state ?? 'unknown'),
        size: num(vol.size),
        replicatedBytes: num(vol.replicatedBytes),
        mirrorErrors: num(vol.mirrorErrors),
      };
    }
  }
  return { ...raw, role, peers: outPeers, volumes: outVolumes };
}

/**
 * A `CycleSourceStatus` as a primary's status: role `primary`, one peer per
 * target (`link` up/down/connecting; `closed` shows as `down`), and per
 * volume `mode: 'cycle'`, `pendingBytes` (the bytes some target lacks: the
 * whole volume while it holds no freeze of it or one older than the base,
 * else the bytes of the active layer and of the frozen layers newer than its
 * freeze — an upper bound, a block rewritten in two layers counts twice),
 * `inSync` (every target reachable and nothing pending: freezes without
 * changes do not count), `state` (`in-sync`, `replicating`, or `lagging`
 * while a target is unreachable), `replicatedBytes` (bytes sent to the
 * targets) and `mirrorErrors` (failed transfers, each retried). The source's
 * cycle fields stay at the top level; each volume keeps its layer status.
 */
function cycleSourceStatus(raw: Obj, volumes: Obj): AdminStatus {
  const targets = (Array.isArray(raw.targets) ? raw.targets : []).filter(isObj);
  const held = targets.length === 0 ? 0 : Math.min(...targets.map((t) => num(t.freeze)));
  const reachable = targets.every((t) => t.link === 'up');
  const sent = targets.reduce((n, t) => n + num(t.bytesSentTotal), 0);
  const errors = targets.reduce((n, t) => n + num(t.transferErrors), 0);
  const outPeers = targets.map((t): AdminPeerStatus => {
    const peer: AdminPeerStatus = { ...t, address: String(t.address ?? ''), link: t.link === 'closed' ? 'down' : String(t.link ?? 'unknown') };
    if (typeof t.node === 'string') peer.node = t.node;
    return peer;
  });
  const outVolumes: Record<string, AdminVolumeStatus> = {};
  for (const [name, v] of Object.entries(volumes)) {
    const vol = isObj(v) ? v : {};
    const active = isObj(vol.active) ? num(vol.active.bytes) : 0;
    const frozen = (Array.isArray(vol.frozen) ? vol.frozen : []).filter(isObj);
    const needsFull = held === 0 || held < num(vol.baseFreeze);
    const pendingBytes = needsFull ? num(vol.size) : active + frozen.filter((l) => num(l.layer) > held).reduce((n, l) => n + num(l.bytes), 0);
    const inSync = targets.length > 0 && reachable && pendingBytes === 0;
    outVolumes[name] = {
      ...vol,
      mode: 'cycle',
      inSync,
      pendingBytes,
      state: inSync ? 'in-sync' : reachable ? 'replicating' : 'lagging',
      size: num(vol.size),
      replicatedBytes: sent,
      mirrorErrors: errors,
    };
  }
  return { ...raw, role: 'primary', peers: outPeers, volumes: outVolumes };
}
