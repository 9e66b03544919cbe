/**
 * NBD URIs (`NetworkBlockDevice/nbd` `doc/uri.md`): `nbd://HOST[:PORT]/EXPORT`
 * over TCP and `nbd+unix:///EXPORT?socket=PATH` over a Unix socket.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';

/** The IANA port of NBD, used when a URI names none. */
export const NBD_DEFAULT_PORT = 10809;

/** Where an NBD export lives: a TCP host and port, or a Unix socket, and the export name. */
export type NbdTarget =
  | {
      /** Host name or IP address (IPv6 without brackets). */
      readonly host: string;
      /** TCP port. */
      readonly port: number;
      readonly socket?: undefined;
      /** Export name (`''`: the server's default export). */
      readonly exportName: string;
    }
  | {
      readonly host?: undefined;
      readonly port?: undefined;
      /** Path of the server's Unix socket. */
      readonly socket: string;
      /** Export name (`''`: the server's default export). */
      readonly exportName: string;
    };

/** True when `text` starts with an NBD URI scheme (`nbd:`, `nbds:`, `nbd+unix:`, `nbds+unix:`, `nbd+tcp:`…). */
export function isNbdUri(text: string): boolean {
  return /^nbds?(\+[a-z]+)?:/i.test(text);
}

function bad(uri: string, why: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `invalid NBD URI ${JSON.stringify(uri)}: ${why}`, { details: { uri } });
}

/**
 * Parses an NBD URI.
 *
 * - `nbd://HOST[:PORT][/EXPORT]` (port 10809 by default; IPv6 as `[::1]`);
 * - `nbd+unix:///[EXPORT]?socket=PATH` (also `nbd+unix://?socket=PATH`).
 *
 * The export name is the path without its leading `/`, percent-decoded
 * (`nbd://h/` and `nbd://h` name the default export `''`).
 *
 * @throws {BlockMirrorError} `BM_ERR_NOT_SUPPORTED` for TLS schemes (`nbds`,
 *   `nbds+unix`) and other transports; `BM_ERR_INVALID_ARGUMENT` for anything
 *   malformed (missing host or socket, bad port, user info, unknown query
 *   parameters, bad percent-encoding).
 */
export function parseNbdUri(uri: string): NbdTarget {
  if (typeof uri !== 'string') throw bad(String(uri), 'not a string');
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw bad(uri, 'not a URI');
  }
  const scheme = url.protocol.slice(0, -1).toLowerCase();
  if (scheme === 'nbds' || scheme === 'nbds+unix') {
    throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `NBD over TLS (${scheme}://) is not supported: use nbd:// or nbd+unix://`, {
      details: { uri },
    });
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+unix' && scheme !== 'nbd+tcp') {
    throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `unsupported NBD URI scheme ${scheme}:// (use nbd:// or nbd+unix://)`, { details: { uri } });
  }
  if (url.username !== '' || url.password !== '') throw bad(uri, 'user info is only used with TLS, which is not supported');
  if (url.hash !== '') throw bad(uri, 'a fragment (#…) has no meaning here');
  let exportName: string;
  try {
    const path = url.pathname.startsWith('/') ? url.pathname.slice(1) : url.pathname;
    exportName = decodeURIComponent(path);
  } catch {
    throw bad(uri, 'the export name is not valid percent-encoded UTF-8');
  }
  if (exportName.includes('\0')) throw bad(uri, 'the export name contains NUL');
  if (Buffer.byteLength(exportName, 'utf8') > 4096) throw bad(uri, 'the export name is longer than 4096 bytes');
  const params = [...url.searchParams.keys()];
  if (scheme === 'nbd+unix') {
    const unknown = params.filter((k) => k !== 'socket');
    if (unknown.length > 0) throw bad(uri, `unknown query parameter ${unknown[0]!}`);
    const socket = url.searchParams.get('socket');
    if (socket === null || socket === '') throw bad(uri, 'nbd+unix:// needs ?socket=PATH');
    if (url.host !== '') throw bad(uri, 'nbd+unix:// takes no host (write nbd+unix:///EXPORT?socket=PATH)');
    return Object.freeze({ socket, exportName });
  }
  if (params.length > 0) throw bad(uri, `unknown query parameter ${params[0]!}`);
  const host = url.hostname.startsWith('[') && url.hostname.endsWith(']') ? url.hostname.slice(1, -1) : url.hostname;
  if (host === '') throw bad(uri, 'missing host (nbd://HOST[:PORT]/EXPORT)');
  const port = url.port === '' ? NBD_DEFAULT_PORT : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(uri, `bad port ${url.port}`);
  return Object.freeze({ host, port, exportName });
}

/** The URI of a target: `nbd://HOST:PORT/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`. */
export function formatNbdUri(target: NbdTarget): string {
  const name = encodeURIComponent(target.exportName).replace(/%2F/gi, '/');
  if (target.socket !== undefined) return `nbd+unix:///${name}?socket=${encodeURIComponent(target.socket).replace(/%2F/gi, '/')}`;
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return `nbd://${host}:${target.port}/${name}`;
}
