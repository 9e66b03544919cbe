/**
 * A {@link TransportConnection} that speaks frames: encodes on the way out,
 * decodes (streaming, bounded) on the way in. A decoding error closes only
 * this connection, after telling the peer why.
 *
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { TransportConnection } from '../transport/transport.js';
import { encodeFrame } from '../codec/encoder.js';
import { FrameDecoder } from '../codec/decoder.js';
import { DEFAULT_CODEC_LIMITS, MessageType, type CodecLimits, type Frame } from '../codec/frame.js';

const log = createDebug('blockmirror:link');

/** Events of a {@link FramedConnection}. */
export interface FramedConnectionEvents {
  frame: [frame: Frame];
  drain: [];
  close: [error?: BlockMirrorError];
}

/** Options of a {@link FramedConnection}. */
export interface FramedConnectionOptions {
  limits?: CodecLimits;
  /** Compute and send payload CRC-32s (receivers always check them when present). */
  payloadChecksum?: boolean;
}

/** Frames over a transport connection. */
export class FramedConnection extends EventEmitter<FramedConnectionEvents> {
  readonly connection: TransportConnection;
  readonly #decoder: FrameDecoder;
  readonly #payloadChecksum: boolean;
  #limits: CodecLimits;
  #closed = false;
  #emittedClose = false;
  /** The transport connection emitted `close`. */
  #transportClosed = false;

  constructor(connection: TransportConnection, options: FramedConnectionOptions = {}) {
    super();
    this.connection = connection;
    this.#limits = options.limits ?? DEFAULT_CODEC_LIMITS;
    this.#payloadChecksum = options.payloadChecksum ?? true;
    this.#decoder = new FrameDecoder({
      limits: this.#limits,
      onFrame: (frame) => {
        if (!this.#closed) this.emit('frame', frame);
      },
    });
    connection.on('data', (chunk) => {
      try {
        this.#decoder.push(chunk);
      } catch (error) {
        this.fail(toBlockMirrorError(error, 'BM_ERR_PROTOCOL'));
      }
    });
    connection.on('drain', () => this.emit('drain'));
    connection.once('close', (error) => {
      this.#transportClosed = true;
      this.#closed = true;
      this.#finish(error === undefined ? undefined : toBlockMirrorError(error, 'BM_ERR_CONNECTION_CLOSED'));
    });
  }

  #finish(error: BlockMirrorError | undefined): void {
    if (this.#emittedClose) return;
    this.#emittedClose = true;
    this.emit('close', error);
  }

  /** Ends the transport connection, destroying it if the peer does not close within a second. */
  #end(): void {
    this.connection.end();
    // closed within end(): nothing to wait for (a timer would keep this connection alive for a second)
    if (this.#transportClosed) return;
    const timer = setTimeout(() => this.connection.destroy(), 1000);
    timer.unref();
    this.connection.once('close', () => clearTimeout(timer));
  }

  /** Size limits of the frames received and sent from now on (see {@link FrameDecoder.setLimits}). */
  setLimits(limits: CodecLimits): void {
    this.#decoder.setLimits(limits);
    this.#limits = limits;
  }

  /** Bytes received and not yet decoded (an unfinished frame). */
  get bufferedBytes(): number {
    return this.#decoder.bufferedBytes;
  }

  /** True once the connection is closing or closed. */
  get closed(): boolean {
    return this.#closed || this.connection.closed;
  }

  /** Sends one frame. Returns false under back-pressure (wait for `drain`). */
  send(type: number, header: unknown, payload?: Uint8Array, flags = 0): boolean {
    if (this.closed) return false;
    return this.connection.write(
      encodeFrame(type, header, payload, { flags, payloadChecksum: this.#payloadChecksum, limits: this.#limits }),
    );
  }

  /** Tells the peer why (ERROR frame), then closes. Emits `close` with `error`. */
  fail(error: BlockMirrorError): void {
    if (this.#closed) return;
    log('closing connection to %o: %s %s', this.connection.remoteAddress, error.code, error.message);
    try {
      const volume = error.details.volume;
      this.send(MessageType.ERROR, typeof volume === 'string' ? { code: error.code, message: error.message, volume } : { code: error.code, message: error.message });
    } catch {
      // the error frame is best effort
    }
    this.#closed = true;
    this.#end();
    this.#finish(error);
  }

  /** Closes without an error. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#end();
    this.#finish(undefined);
  }

  /** Closes at once. */
  destroy(error?: BlockMirrorError): void {
    this.#closed = true;
    this.connection.destroy();
    this.#finish(error);
  }
}
