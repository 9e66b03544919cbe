/**
 * `blockmirror resolve|promote|demote`: sends an operator command to a
 * running node's admin endpoint (`POST /volumes/NAME/ACTION`) and prints its
 * result as one JSON line; a refusal becomes the node's coded error.
 *
 * @module
 */
import { BlockMirrorError, isErrorCode } from '../errors.js';
import { formatHostPort, type HostPort, type RoleCommandConfig } from './args.js';
import { say, type CliIo } from './runtime.js';
import { adminRequest } from './admin-client.js';

/** POSTs `path` to the admin endpoint at `address`; resolves with the status code and body. */
export function adminPost(address: HostPort, path: string, timeout: number): Promise<{ status: number; body: string }> {
  return adminRequest(address, 'POST', path, timeout);
}

/** The admin path of a command. */
function actionPath(kind: 'resolve' | 'promote' | 'demote', config: RoleCommandConfig): string {
  const base = `/volumes/${encodeURIComponent(config.volume)}/${kind}`;
  if (kind === 'resolve') return `${base}?discard=${config.discard ?? ''}`;
  if (kind === 'promote') {
    const query = [...(config.force === true ? ['force=1'] : []), ...(config.peer === undefined ? [] : [`peer=${encodeURIComponent(formatHostPort(config.peer))}`])];
    return query.length === 0 ? base : `${base}?${query.join('&')}`;
  }
  return config.timeout === undefined ? base : `${base}?timeout=${config.timeout}`;
}

/**
 * Runs `blockmirror resolve|promote|demote`: prints the node's answer (JSON)
 * and returns 0, or throws the node's coded error.
 */
export async function runRoleCommand(kind: 'resolve' | 'promote' | 'demote', config: RoleCommandConfig, io: CliIo): Promise<number> {
  // a demotion drains the volume first: wait as long as it may take
  const timeout = kind === 'demote' ? (config.timeout ?? 30_000) + 10_000 : 30_000;
  const { status, body } = await adminPost(config.admin, actionPath(kind, config), timeout);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new BlockMirrorError('BM_ERR_PROTOCOL', `the admin endpoint at ${formatHostPort(config.admin)} answered HTTP ${status} without JSON`);
  }
  if (status === 200) {
    say(io, JSON.stringify(parsed));
    return 0;
  }
  const error = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
  const code = typeof error?.code === 'string' && isErrorCode(error.code) ? error.code : 'BM_ERR_PROTOCOL';
  const message = typeof error?.message === 'string' ? error.message : `HTTP ${status}`;
  throw new BlockMirrorError(code, `${kind} ${config.volume}: ${message}`);
}
