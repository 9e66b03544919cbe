/**
 * A node id that survives restarts: generated once and kept in the node's
 * state directory (`<dir>/node-id`, a state file), so that a restarted
 * primary is recognised by its mirror (its new session replaces the old one)
 * and status, logs and peer lists name the same node across runs.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BlockMirrorError } from '../errors.js';
import { readStateFile, writeStateFile } from './state-file.js';

/** Name of the node id file inside a state directory. */
export const NODE_ID_FILE = 'node-id';

const FORMAT = 'blockmirror-node-id';

/** Longest node id, in characters (as in handshakes and heartbeats). */
const MAX_NODE_ID = 256;

/**
 * Returns the node id kept in `dir` (which must exist), creating it as
 * `<prefix>-<8 hex digits>` on the first call.
 *
 * @throws {@link BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` when the file is damaged or
 *   holds no valid id; `BM_ERR_IO` / `BM_ERR_NO_SPACE` on system errors;
 *   `BM_ERR_INVALID_ARGUMENT` for an empty `dir` or `prefix`.
 */
export async function persistentNodeId(dir: string, prefix: string): Promise<string> {
  if (typeof dir !== 'string' || dir === '') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'the state directory must be a non-empty string');
  if (typeof prefix !== 'string' || prefix === '' || prefix.length > 64) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'the node id prefix must be a string of 1..64 characters');
  const path = join(dir, NODE_ID_FILE);
  const saved = (await readStateFile(path)) as { format?: unknown; node?: unknown } | undefined;
  if (saved !== undefined) {
    if (saved === null || typeof saved !== 'object' || saved.format !== FORMAT || typeof saved.node !== 'string' || saved.node === '' || saved.node.length > MAX_NODE_ID) {
      throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${path} holds no valid node id`, { details: { path } });
    }
    return saved.node;
  }
  const node = `${prefix}-${randomBytes(4).toString('hex')}`;
  await writeStateFile(path, { format: FORMAT, version: 1, node });
  return node;
}
