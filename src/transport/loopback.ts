/**
 * Whether a listening address is reachable only from this machine.
 *
 * @module
 */
import net from 'node:net';

/**
 * True for loopback addresses: `127.0.0.0/8`, `::1`, `::ffff:127.x.x.x` and
 * the name `localhost`. Anything else (including `0.0.0.0` and `::`) may be
 * reachable from the network.
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) return h === '::1' || /^::ffff:127\./.test(h) || /^0{0,4}(:0{0,4}){6}:0{0,3}1$/.test(h);
  return false;
}
