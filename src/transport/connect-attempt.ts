/**
 * One outgoing connection attempt of a socket transport (TCP or TLS): waits
 * for the socket's ready event, honours the timeout and the abort signal,
 * and turns every failure into `BM_ERR_CONNECT_FAILED` (with a `reason`:
 * `timeout`, `aborted`, a system code…) after destroying the socket.
 *
 * @module
 */
import type net from 'node:net';
import debug from 'debug';
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError } from '../errors.js';
import type { TransportAddress } from './transport.js';

const log = debug('blockmirror:transport');

/** What a transport gives {@link connectAttempt}. */
export interface ConnectAttempt<T> {
  address: TransportAddress;
  /** Milliseconds; 0: no timeout. */
  timeout: number;
  signal: AbortSignal | undefined;
  clock: Clock;
  /** Name in log lines (`tcp`, `tls`). */
  kind: string;
  /** Opens the socket (called once the signal is known not to be aborted). */
  open: () => net.Socket;
  /** The event that says the socket is ready (`connect`, `secureConnect`). */
  ready: string;
  /** The socket is ready: the connection, or an error that fails the attempt. */
  accept: (socket: net.Socket, fail: ConnectFailure) => T | BlockMirrorError;
  /** The `reason` of a socket error. */
  reasonOf: (error: Error & { code?: unknown }) => string;
}

/** Makes the attempt's coded error. */
export type ConnectFailure = (reason: string, message: string, cause?: unknown) => BlockMirrorError;

/** Runs one connection attempt (see the module notes). */
export function connectAttempt<T>(attempt: ConnectAttempt<T>): Promise<T> {
  const { address, timeout, signal } = attempt;
  const fail: ConnectFailure = (reason, message, cause) =>
    new BlockMirrorError('BM_ERR_CONNECT_FAILED', `cannot connect to ${address.host}:${address.port}: ${message}`, {
      cause,
      details: { host: address.host, port: address.port, reason },
    });
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(fail('aborted', 'aborted', signal.reason));
      return;
    }
    const socket = attempt.open();
    let timer: TimerHandle | undefined;
    const settle = (): void => {
      socket.off(attempt.ready, onReady);
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
      if (timer !== undefined) attempt.clock.clearTimeout(timer);
      timer = undefined;
    };
    const abandon = (error: BlockMirrorError): void => {
      settle();
      socket.on('error', () => {});
      socket.destroy();
      log('%s connect %s:%d failed: %s', attempt.kind, address.host, address.port, error.message);
      reject(error);
    };
    const onReady = (): void => {
      const result = attempt.accept(socket, fail);
      if (result instanceof BlockMirrorError) {
        abandon(result);
        return;
      }
      settle();
      resolve(result);
    };
    const onError = (error: Error & { code?: unknown }): void => abandon(fail(attempt.reasonOf(error), error.message, error));
    const onAbort = (): void => abandon(fail('aborted', 'aborted', signal?.reason));
    socket.once(attempt.ready, onReady);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeout > 0) {
      timer = attempt.clock.setTimeout(() => {
        timer = undefined;
        abandon(fail('timeout', `timed out after ${timeout} ms`));
      }, timeout);
    }
  });
}
