/**
 * `blockmirror status`: fetches `GET /status` from an admin endpoint and
 * prints it as a table or JSON.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { normalizeStatus, type AdminStatus } from '../admin/status.js';
import { formatHostPort, type HostPort, type StatusConfig } from './args.js';
import { say, type CliIo } from './runtime.js';
import { adminRequest } from './admin-client.js';
import { renderStatusTable } from './table.js';

/** GETs `path` from the admin endpoint at `address`; resolves with the status code and body. */
export function adminGet(address: HostPort, path: string, timeout = 5000): Promise<{ status: number; body: string }> {
  return adminRequest(address, 'GET', path, timeout);
}

/** Fetches and parses `GET /status`. */
export async function fetchStatus(address: HostPort, timeout = 5000): Promise<AdminStatus> {
  const { status, body } = await adminGet(address, '/status', timeout);
  const where = formatHostPort(address);
  if (status !== 200) {
    throw new BlockMirrorError('BM_ERR_PROTOCOL', `the admin endpoint at ${where} answered HTTP ${status}: ${body.trim().slice(0, 200)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new BlockMirrorError('BM_ERR_PROTOCOL', `the admin endpoint at ${where} did not answer JSON`);
  }
  try {
    return normalizeStatus(parsed);
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_PROTOCOL', `the admin endpoint at ${where} answered an unexpected document: ${(error as Error).message}`);
  }
}

/** Runs `blockmirror status`. */
export async function runStatus(config: StatusConfig, io: CliIo): Promise<number> {
  const status = await fetchStatus(config.admin);
  if (config.json) say(io, JSON.stringify(status, null, 2));
  else io.stdout.write(renderStatusTable(status));
  return 0;
}
