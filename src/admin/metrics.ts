/**
 * Prometheus text exposition (format 0.0.4) of a node's status and metrics.
 *
 * @module
 */
import type { NbdServerStats } from '../nbd/server.js';
import type { LatencyHistogram } from './histogram.js';
import type { AdminStatus } from './status.js';

/** `Content-Type` of {@link renderMetrics}' output. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Metrics that do not come from `status()`. */
export interface AdminMetrics {
  /** Write-latency histogram per volume name (fed by the NBD backend adapter or the caller). */
  writeLatency?: ReadonlyMap<string, LatencyHistogram>;
  /** NBD server counters (`NbdServer#stats`), when the node serves NBD. */
  nbd?: () => NbdServerStats;
}

/** Escapes a label value: backslash, double quote and line feed (`\\`, `\"`, `\n`). */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\\' ? '\\\\' : c === '"' ? '\\"' : '\\n'));
}

/** Escapes HELP text: backslash and line feed. */
function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === '\\' ? '\\\\' : '\\n'));
}

/** A sample value as Prometheus writes it (`+Inf`, `-Inf`, `NaN`, or a number). */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return '';
  return `{${keys.map((k) => `${k}="${escapeLabelValue(labels[k]!)}"`).join(',')}}`;
}

class Writer {
  readonly #lines: string[] = [];

  family(name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void {
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
  }

  sample(name: string, labels: Labels, value: number): void {
    this.#lines.push(`${name}${labelText(labels)} ${formatValue(value)}`);
  }

  text(): string {
    return this.#lines.length === 0 ? '' : `${this.#lines.join('\n')}\n`;
  }
}

/**
 * Renders the `blockmirror_` series:
 *
 * | series | type | labels |
 * |---|---|---|
 * | `blockmirror_info` (always 1) | gauge | `role`, `node`, `version` |
 * | `blockmirror_link_up` (1 when `link` is `up`) | gauge | `peer` |
 * | `blockmirror_heartbeats_rejected_total` (heartbeats refused: `malformed`, `auth`, `unauthenticated` — over TLS without a secret, before a session key —, `unexpected-node` — another node's —, `replayed`) | counter | `peer`, `reason` |
 * | `blockmirror_volume_in_sync` | gauge | `volume` |
 * | `blockmirror_pending_bytes` | gauge | `volume` |
 * | `blockmirror_volume_size_bytes` | gauge | `volume` |
 * | `blockmirror_replicated_bytes_total` | counter | `volume` |
 * | `blockmirror_mirror_errors_total` | counter | `volume` |
 * | `blockmirror_write_latency_seconds` (`_bucket`, `_sum`, `_count`) | histogram | `volume`, `le` |
 * | `blockmirror_nbd_connections` | gauge | |
 * | `blockmirror_nbd_requests_total`, `blockmirror_nbd_errors_total` | counter | |
 * | `blockmirror_nbd_read_bytes_total`, `blockmirror_nbd_written_bytes_total` | counter | |
 *
 * The latency histogram and the `nbd` series appear only when `metrics` has them.
 */
export function renderMetrics(status: AdminStatus, metrics: AdminMetrics = {}, version = ''): string {
  const w = new Writer();
  const volumes = Object.entries(status.volumes);

  w.family('blockmirror_info', 'gauge', 'Static information about this blockmirror node (value is always 1).');
  w.sample('blockmirror_info', { role: status.role, node: status.node ?? '', version }, 1);

  w.family('blockmirror_link_up', 'gauge', 'Whether the replication link to the peer is up (1) or not (0).');
  for (const p of status.peers) w.sample('blockmirror_link_up', { peer: p.address }, p.link === 'up' ? 1 : 0);

  const rejected = status.peers.flatMap((p) => {
    const hb = p.heartbeats as { rejectedByReason?: unknown } | undefined;
    const byReason = hb !== null && typeof hb === 'object' ? hb.rejectedByReason : undefined;
    if (byReason === null || typeof byReason !== 'object') return [];
    return Object.entries(byReason as Record<string, unknown>)
      .filter((e): e is [string, number] => typeof e[1] === 'number' && Number.isFinite(e[1]))
      .map(([reason, n]) => ({ peer: p.address, reason, n }));
  });
  if (rejected.length > 0) {
    w.family('blockmirror_heartbeats_rejected_total', 'counter', 'Heartbeats refused, by reason (unexpected-node: a heartbeat of another node than the session\'s, ignored).');
    for (const r of rejected) w.sample('blockmirror_heartbeats_rejected_total', { peer: r.peer, reason: r.reason }, r.n);
  }

  w.family('blockmirror_volume_in_sync', 'gauge', 'Whether the mirror of the volume is in sync (1) or not (0).');
  for (const [name, v] of volumes) w.sample('blockmirror_volume_in_sync', { volume: name }, v.inSync ? 1 : 0);

  w.family('blockmirror_pending_bytes', 'gauge', 'Bytes written on the primary and not yet acknowledged by the mirror.');
  for (const [name, v] of volumes) w.sample('blockmirror_pending_bytes', { volume: name }, v.pendingBytes);

  w.family('blockmirror_volume_size_bytes', 'gauge', 'Size of the volume in bytes.');
  for (const [name, v] of volumes) w.sample('blockmirror_volume_size_bytes', { volume: name }, v.size);

  w.family('blockmirror_replicated_bytes_total', 'counter', 'Bytes replicated: acknowledged by the mirror (primary) or applied from the primary (target).');
  for (const [name, v] of volumes) w.sample('blockmirror_replicated_bytes_total', { volume: name }, v.replicatedBytes);

  w.family('blockmirror_mirror_errors_total', 'counter', 'Mirror requests that failed (each is retried).');
  for (const [name, v] of volumes) w.sample('blockmirror_mirror_errors_total', { volume: name }, v.mirrorErrors);

  const latency = metrics.writeLatency;
  if (latency !== undefined && latency.size > 0) {
    const name = 'blockmirror_write_latency_seconds';
    w.family(name, 'histogram', 'Latency of writes through the volume, until the replication mode says they are done, in seconds.');
    for (const [volume, h] of latency) {
      const snap = h.snapshot();
      for (const b of snap.buckets) w.sample(`${name}_bucket`, { volume, le: formatValue(b.le) }, b.count);
      w.sample(`${name}_sum`, { volume }, snap.sum);
      w.sample(`${name}_count`, { volume }, snap.count);
    }
  }

  if (metrics.nbd !== undefined) {
    const s = metrics.nbd();
    w.family('blockmirror_nbd_connections', 'gauge', 'Open NBD client connections.');
    w.sample('blockmirror_nbd_connections', {}, s.connections);
    w.family('blockmirror_nbd_requests_total', 'counter', 'NBD transmission requests received.');
    w.sample('blockmirror_nbd_requests_total', {}, s.requests);
    w.family('blockmirror_nbd_errors_total', 'counter', 'NBD requests answered with an error.');
    w.sample('blockmirror_nbd_errors_total', {}, s.errors);
    w.family('blockmirror_nbd_read_bytes_total', 'counter', 'Bytes returned to NBD clients by READ.');
    w.sample('blockmirror_nbd_read_bytes_total', {}, s.bytesRead);
    w.family('blockmirror_nbd_written_bytes_total', 'counter', 'Bytes written by NBD clients with WRITE.');
    w.sample('blockmirror_nbd_written_bytes_total', {}, s.bytesWritten);
  }
  return w.text();
}
