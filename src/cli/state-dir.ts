/**
 * The state directory of a CLI node (`--state-dir`, default beside the first
 * volume file): created when missing; it keeps the node's persistent id.
 *
 * @module
 */
import { mkdir } from 'node:fs/promises';
import { BlockMirrorError } from '../errors.js';
import { persistentNodeId } from '../storage/node-id.js';
import type { ServerConfig } from './args.js';

/** `--state-dir`, or `<first volume file>.<role>-state` (the parser requires `--state-dir` when no volume is a file). */
export function stateDirOf(config: ServerConfig, role: 'mirror' | 'primary'): string {
  const file = config.volumes.find((v) => v.nbd === undefined) ?? config.volumes[0]!;
  return config.stateDir ?? `${file.path}.${role}-state`;
}

/** Creates `dir` (and its parents) when missing; a failure is `BM_ERR_INVALID_ARGUMENT` naming `--state-dir`. */
export async function ensureStateDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `cannot create --state-dir ${dir}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}

/**
 * The primary's node id, kept in its state directory (created on the first
 * start as `<prefix>-<8 hex digits>`).
 */
export async function primaryNodeId(config: ServerConfig, prefix: 'primary' | 'cycle-source' = 'primary'): Promise<string> {
  const dir = stateDirOf(config, 'primary');
  await ensureStateDir(dir);
  return persistentNodeId(dir, prefix);
}
