/**
 * A minimal NBD client on an in-memory byte pipe, so that a simulation can
 * send its requests through the real {@link NbdServer} (handshake with
 * `NBD_OPT_EXPORT_NAME`, simple replies, several requests in flight).
 *
 * @module
 */
import { Duplex } from 'node:stream';
import type { NbdServer } from '../../nbd/server.js';
import * as P from '../../nbd/protocol.js';

/**
 * Two connected in-memory duplex streams: what one writes, the other reads.
 * Destroying one ends the other.
 */
export function duplexPair(): [Duplex, Duplex] {
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        const other = peer();
        if (!other.destroyed) other.push(chunk);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
      destroy(error, callback) {
        const other = peer();
        if (!other.destroyed) {
          other.push(null);
          other.destroy();
        }
        callback(error);
      },
    });
  const a: Duplex = make(() => b);
  const b: Duplex = make(() => a);
  return [a, b];
}

/** The reply to one request: the NBD error value (0: success). */
export type NbdReply = number;

/** See the module notes. Create with {@link SimNbdClient.connect}. */
export class SimNbdClient {
  readonly #stream: Duplex;
  #buf: Buffer = Buffer.alloc(0);
  #nextHandle = 1;
  readonly #waiting = new Map<number, (error: NbdReply) => void>();
  #wake: (() => void) | undefined;
  #closed = false;

  private constructor(stream: Duplex) {
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => {
      this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
      this.#wake?.();
      this.#replies();
    });
    stream.on('error', () => undefined);
    stream.on('close', () => this.#close());
    stream.on('end', () => this.#close());
  }

  /** Connects to `server` over a new pipe and enters transmission on `exportName`. */
  static async connect(server: NbdServer, exportName: string): Promise<SimNbdClient> {
    const [client, serverSide] = duplexPair();
    const c = new SimNbdClient(client);
    server.serve(serverSide, { address: 'simulator' });
    await c.#read(18); // greeting
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES);
    const name = Buffer.from(exportName, 'utf8');
    const option = Buffer.alloc(16);
    option.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
    option.writeUInt32BE(P.NBD_OPT_EXPORT_NAME, 8);
    option.writeUInt32BE(name.length, 12);
    client.write(Buffer.concat([flags, option, name]));
    await c.#read(10); // size and transmission flags
    c.#handshakeDone = true;
    c.#replies();
    return c;
  }

  #handshakeDone = false;

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends a request; resolves with the NBD error of its reply (never, if the connection dies first). */
  request(type: number, offset: number, length: number, flags = 0, payload?: Uint8Array): Promise<NbdReply> {
    if (this.#closed) return new Promise<NbdReply>(() => {});
    const handle = this.#nextHandle++;
    const h = P.encodeRequestHeader(type, flags, handle, offset, length);
    const reply = new Promise<NbdReply>((resolve) => this.#waiting.set(handle, resolve));
    this.#stream.write(payload === undefined ? h : Buffer.concat([h, payload]));
    return reply;
  }

  /** Drops the connection (requests waiting for a reply never get one). */
  destroy(): void {
    this.#stream.destroy();
    this.#close();
  }

  #close(): void {
    this.#closed = true;
    this.#wake?.();
  }

  async #read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.#closed) throw new Error('NBD connection closed during the handshake');
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Parses simple replies (no READ is sent: no data follows a reply). */
  #replies(): void {
    if (!this.#handshakeDone) return;
    while (this.#buf.length >= 16) {
      if (this.#buf.readUInt32BE(0) !== P.NBD_SIMPLE_REPLY_MAGIC) {
        this.destroy();
        return;
      }
      const error = this.#buf.readUInt32BE(4);
      const handle = Number(this.#buf.readBigUInt64BE(8));
      this.#buf = this.#buf.subarray(16);
      const resolve = this.#waiting.get(handle);
      this.#waiting.delete(handle);
      resolve?.(error);
    }
  }
}
