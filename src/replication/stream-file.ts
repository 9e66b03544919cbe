/**
 * The replication stream id of a volume, kept beside its journal file so that
 * a restarted primary that recovers journaled requests continues the same
 * stream (the target keeps its ordering state per stream).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename } from 'node:fs/promises';

/**
 * Returns the stream id stored at `path` when `keep` (the journal holds
 * requests of that stream) and the file is valid; otherwise creates a new id
 * and stores it durably (write to a temporary file, fsync, rename).
 */
export async function loadStream(path: string, keep: boolean): Promise<string> {
  if (keep) {
    try {
      const stored = JSON.parse(await readFile(path, 'utf8')) as { stream?: unknown };
      if (typeof stored.stream === 'string' && /^[0-9a-f]{16,64}$/.test(stored.stream)) return stored.stream;
    } catch {
      // missing or unreadable: start a new stream
    }
  }
  const stream = randomBytes(8).toString('hex');
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify({ stream, created: new Date().toISOString() }));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  return stream;
}
