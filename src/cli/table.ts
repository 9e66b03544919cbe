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
        ['VOLUME', 'MODE', 'STATE', 'IN-SYNC', 'PENDING', 'REPLICATED', 'ERRORS', 'SIZE'],
        ...volumes.map(([name, v]) => [
          name,
          v.mode,
          v.state,
          v.inSync ? 'yes' : 'no',
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
