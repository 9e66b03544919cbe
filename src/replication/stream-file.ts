/**
 * The replication stream id of a volume, kept beside its journal file so that
 * a restarted primary that recovers journaled requests continues the same
 * stream (the target keeps its ordering state per stream).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { readStateFile, writeStateFile } from '../storage/state-file.js';

/**
 * Returns the stream id stored at `path` when `keep` (the journal holds
 * requests of that stream) and the file is valid; otherwise creates a new id
 * and stores it durably.
 */
export async function loadStream(path: string, keep: boolean): Promise<string> {
  if (keep) {
    try {
      const stored = (await readStateFile(path)) as { stream?: unknown } | undefined;
      if (typeof stored?.stream === 'string' && /^[0-9a-f]{16,64}$/.test(stored.stream)) return stored.stream;
    } catch {
      // damaged: start a new stream (the target then starts from the acknowledged base)
    }
  }
  const stream = randomBytes(8).toString('hex');
  await writeStateFile(path, { stream, created: new Date().toISOString() });
  return stream;
}
