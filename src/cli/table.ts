/**
 * Plain-text rendering of an admin status document (for `blockmirror status`
 * and the demo).
 *
 * @module
 */
import type { AdminStatus } from '../admin/status.js';

/** `1536` → `1.5 KiB`; bytes below 1 KiB as `N B`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Left-aligned columns separated by two spaces. */
export function renderColumns(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

function connectionsOf(peer: AdminStatus['peers'][number]): string {
  const c = peer.connections;
  if (Array.isArray(c)) {
    const open = c.filter((s) => (s as { status?: unknown } | null)?.status === 'open').length;
    return `${open}/${c.length}`;
  }
  return typeof c === 'number' ? String(c) : '-';
}

/** `lastInSyncAt` as `now` (in sync), `never`, or the time since (`42s ago`, `5m ago`, `3h ago`, `2d ago`). */
export function formatLastInSync(v: AdminStatus['volumes'][string], now = Date.now()): string {
  if (v.inSync) return 'now';
  const at = typeof v.lastInSyncAt === 'string' ? Date.parse(v.lastInSyncAt) : Number.NaN;
  if (!Number.isFinite(at)) return 'never';
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/** Progress of a running sync (`41.5%`), or `-`. */
function syncProgress(v: AdminStatus['volumes'][string]): string {
  const p = (v.progress ?? v.sync) as { operation?: unknown; percent?: unknown; finished?: unknown } | undefined;
  if (p === undefined || p === null || typeof p.percent !== 'number' || p.finished === true || (p.operation !== undefined && p.operation !== 'resync')) return '-';
  return `${p.percent.toFixed(1)}%`;
}

/** The status as a header line, a peers table and a volumes table. */
export function renderStatusTable(status: AdminStatus): string {
  const out: string[] = [];
  const version = typeof status.version === 'string' && status.version !== '' ? `  version ${status.version}` : '';
  out.push(`role ${status.role}  node ${status.node ?? '-'}${version}`);
  out.push('');
  if (status.peers.length === 0) out.push('PEERS: none');
  else {
    out.push(
      renderColumns([
        ['PEER', 'LINK', 'CONNECTIONS', 'NODE'],
        ...status.peers.map((p) => [p.address, p.link, connectionsOf(p), typeof p.node === 'string' ? p.node : '-']),
      ]),
    );
  }
  out.push('');
  const volumes = Object.entries(status.volumes);
  if (volumes.length === 0) out.push('VOLUMES: none');
  else {
    out.push(
      renderColumns([
        ['VOLUME', 'MODE', 'STATE', 'IN-SYNC', 'DISK', 'PEER-DISK', 'SYNC', 'LAST-IN-SYNC', 'PENDING', 'REPLICATED', 'ERRORS', 'SIZE'],
        ...volumes.map(([name, v]) => [
          name,
          v.mode,
          v.state,
          v.inSync ? 'yes' : 'no',
          typeof v.disk === 'string' ? v.disk : '-',
          typeof v.peerDisk === 'string' ? v.peerDisk : '-',
          syncProgress(v),
          formatLastInSync(v),
          formatBytes(v.pendingBytes),
          formatBytes(v.replicatedBytes),
          String(v.mirrorErrors),
          formatBytes(v.size),
        ]),
      ]),
    );
  }
  return `${out.join('\n')}\n`;
}
