/**
 * The CLI's client of a running node's admin endpoint (`status`, `resolve`,
 * `promote`, `demote`): one HTTP request, its status code and body, and
 * coded errors when the endpoint cannot be reached or does not answer.
 *
 * @module
 */
import http from 'node:http';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { formatHostPort, type HostPort } from './args.js';

/** Sends `method path` (no body) to the admin endpoint at `address`; resolves with the status code and body. */
export function adminRequest(address: HostPort, method: 'GET' | 'POST', path: string, timeout: number): Promise<{ status: number; body: string }> {
  const where = formatHostPort(address);
  const headers: http.OutgoingHttpHeaders = method === 'POST' ? { accept: 'application/json', 'content-length': 0 } : { accept: 'application/json' };
  return new Promise((resolve, reject) => {
    const req = http.request({ host: address.host, port: address.port, path, method, timeout, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (err) => reject(toBlockMirrorError(err, 'BM_ERR_CONNECTION_CLOSED')));
    });
    req.on('timeout', () => req.destroy(new BlockMirrorError('BM_ERR_TIMEOUT', `the admin endpoint at ${where} did not answer within ${timeout} ms`)));
    req.on('error', (err) => {
      if (err instanceof BlockMirrorError) reject(err);
      else {
        const mapped = toBlockMirrorError(err, 'BM_ERR_CONNECT_FAILED');
        reject(new BlockMirrorError(mapped.code, `cannot reach the admin endpoint at ${where}: ${err.message}`, { cause: err }));
      }
    });
    req.end();
  });
}
