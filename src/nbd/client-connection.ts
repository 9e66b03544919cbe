/**
 * One NBD client connection in transmission: sends requests, parses simple
 * and structured replies (any order, several in flight) and settles each
 * request with its result or a coded error.
 *
 * @module
 */
import type net from 'node:net';
import { EventEmitter } from 'eventemitter3';
import { BlockMirrorError, type ErrorCode } from '../errors.js';
import type { NbdNegotiated } from './client-handshake.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  commandName,
  encodeRequestHeader,
} from './protocol.js';

const EMPTY = Buffer.alloc(0);
/** Largest BLOCK_STATUS chunk accepted (the spec asks servers for at most 2^20 extents: 8 MiB + 4). */
const MAX_STATUS_CHUNK = 8 * 1024 * 1024 + 4;
/** Largest error chunk accepted (a 4 KiB message, its fields, some slack). */
const MAX_ERROR_CHUNK = 64 * 1024;

/** One extent of a `BLOCK_STATUS` reply for the negotiated context: length and `NBD_STATE_*` flags. */
export interface RawExtent {
  length: number;
  flags: number;
}

/** A request to send. */
export interface NbdCommand {
  type: number;
  flags: number;
  offset: number;
  length: number;
  /** WRITE payload (`length` bytes), sent without copying. */
  payload?: Uint8Array;
  /** READ destination (`length` bytes). */
  target?: Buffer;
}

interface Pending {
  readonly handle: number;
  readonly cmd: NbdCommand;
  covered: number;
  extents: RawExtent[] | undefined;
  error: { errno: number; message: string } | undefined;
  resolve: (extents: RawExtent[] | undefined) => void;
  reject: (error: BlockMirrorError) => void;
}

/** Events of an {@link NbdClientConnection}. */
export interface NbdClientConnectionEvents {
  /** The connection is gone; every request in flight was rejected with `error`. */
  close: [error: BlockMirrorError];
  /** The last request in flight was answered. */
  idle: [];
}

/**
 * The coded error for an NBD error value in a reply: `EPERM` →
 * `BM_ERR_READ_ONLY`, `ENOSPC` → `BM_ERR_NO_SPACE`, `EINVAL`/`EOVERFLOW` →
 * `BM_ERR_INVALID_ARGUMENT`, `ENOTSUP` → `BM_ERR_NOT_SUPPORTED`, `ESHUTDOWN`
 * → `BM_ERR_DEVICE_UNAVAILABLE`, anything else (`EIO`, `ENOMEM`, unknown) →
 * `BM_ERR_IO`.
 */
export function errorForNbdReply(errno: number, message: string, details: Record<string, unknown>): BlockMirrorError {
  let code: ErrorCode;
  switch (errno) {
    case NBD_EPERM:
      code = 'BM_ERR_READ_ONLY';
      break;
    case NBD_ENOSPC:
      code = 'BM_ERR_NO_SPACE';
      break;
    case NBD_EINVAL:
    case NBD_EOVERFLOW:
      code = 'BM_ERR_INVALID_ARGUMENT';
      break;
    case NBD_ENOTSUP:
      code = 'BM_ERR_NOT_SUPPORTED';
      break;
    case NBD_ESHUTDOWN:
      code = 'BM_ERR_DEVICE_UNAVAILABLE';
      break;
    case NBD_EIO:
    case NBD_ENOMEM:
    default:
      code = 'BM_ERR_IO';
  }
  const op = typeof details.op === 'string' ? details.op : 'request';
  const text = message === '' ? '' : `: ${message}`;
  return new BlockMirrorError(code, `NBD server failed ${op} with error ${errno}${text}`, { details: { ...details, errno } });
}

/**
 * Transmission on one socket after a successful {@link negotiate}. Requests
 * are written as they come (corked per tick); replies settle them in any
 * order. A protocol violation by the server, or the socket closing, rejects
 * every request in flight and emits `close`.
 */
export class NbdClientConnection extends EventEmitter<NbdClientConnectionEvents> {
  /** What the handshake agreed on. */
  readonly negotiated: NbdNegotiated;
  /** Resolves once the socket is closed. */
  readonly closed: Promise<void>;

  readonly #socket: net.Socket;
  readonly #pending = new Map<number, Pending>();
  #nextHandle = 1;
  #head: Buffer = EMPTY;
  #sink: Buffer = EMPTY;
  #sinkPos = 0;
  #sinkEnd = 0;
  #then: (() => void) | undefined;
  #dead: BlockMirrorError | undefined;
  #corked = false;
  #socketError: Error | undefined;

  constructor(socket: net.Socket, negotiated: NbdNegotiated) {
    super();
    this.#socket = socket;
    this.negotiated = negotiated;
    this.closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#socketError = err;
    });
    socket.on('close', () => {
      const why = this.#socketError === undefined ? '' : `: ${this.#socketError.message}`;
      this.#die(new BlockMirrorError('BM_ERR_DEVICE_UNAVAILABLE', `the connection to the NBD server was lost${why}`, { cause: this.#socketError }));
    });
    if (negotiated.leftover.length > 0) this.#onData(negotiated.leftover);
    socket.resume();
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** False once the connection is gone (or going). */
  get alive(): boolean {
    return this.#dead === undefined;
  }

  /**
   * Sends a request; resolves when its reply says success (with the extents
   * of the allocation context for `BLOCK_STATUS`), rejects with a coded error.
   */
  send(cmd: NbdCommand): Promise<RawExtent[] | undefined> {
    if (this.#dead !== undefined) return Promise.reject(this.#dead);
    const handle = this.#nextHandle;
    this.#nextHandle = this.#nextHandle >= 0xffffffff ? 1 : this.#nextHandle + 1;
    const header = encodeRequestHeader(cmd.type, cmd.flags, handle, cmd.offset, cmd.length);
    const promise = new Promise<RawExtent[] | undefined>((resolve, reject) => {
      this.#pending.set(handle, { handle, cmd, covered: 0, extents: undefined, error: undefined, resolve, reject });
    });
    this.#cork();
    this.#socket.write(header);
    if (cmd.type === NBD_CMD_WRITE && cmd.payload !== undefined && cmd.payload.byteLength > 0) this.#socket.write(cmd.payload);
    return promise;
  }

  /** Sends `NBD_CMD_DISC` and ends the socket (call when nothing is in flight). */
  disconnect(): void {
    if (this.#dead !== undefined) return;
    this.#die(new BlockMirrorError('BM_ERR_CLOSED', 'the NBD device is closed'));
    this.#socket.end(encodeRequestHeader(NBD_CMD_DISC, 0, 0, 0, 0));
  }

  /** Closes the socket at once; requests in flight are rejected with `error`. */
  destroy(error: BlockMirrorError): void {
    this.#die(error);
    this.#socket.destroy();
  }

  #cork(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#socket.cork();
    process.nextTick(() => {
      this.#corked = false;
      this.#socket.uncork();
    });
  }

  #die(error: BlockMirrorError): void {
    if (this.#dead !== undefined) return;
    this.#dead = error;
    this.#head = EMPTY;
    this.#then = undefined;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(error);
    this.emit('close', error);
  }

  /** A server that broke the protocol: hard disconnect. */
  #violation(message: string, code: ErrorCode = 'BM_ERR_PROTOCOL'): void {
    this.destroy(new BlockMirrorError(code, `NBD server broke the protocol: ${message}`));
  }

  /** Next `end - start` bytes of input go into `sink[start…end)`, then `then` runs. */
  #expect(sink: Buffer, start: number, end: number, then: () => void): void {
    this.#sink = sink;
    this.#sinkPos = start;
    this.#sinkEnd = end;
    this.#then = then;
  }

  #onData(chunk: Buffer): void {
    if (this.#dead !== undefined) return;
    let data = chunk;
    if (this.#head.length > 0) {
      data = Buffer.concat([this.#head, chunk]);
      this.#head = EMPTY;
    }
    let pos = 0;
    while (this.#dead === undefined) {
      const then = this.#then;
      if (then !== undefined) {
        const n = Math.min(this.#sinkEnd - this.#sinkPos, data.length - pos);
        if (n > 0) {
          data.copy(this.#sink, this.#sinkPos, pos, pos + n);
          pos += n;
          this.#sinkPos += n;
        }
        if (this.#sinkPos < this.#sinkEnd) return;
        this.#then = undefined;
        this.#sink = EMPTY;
        then();
        continue;
      }
      const avail = data.length - pos;
      if (avail < 4) {
        if (avail > 0) this.#head = Buffer.from(data.subarray(pos));
        return;
      }
      const magic = data.readUInt32BE(pos);
      if (magic === NBD_SIMPLE_REPLY_MAGIC) {
        if (avail < NBD_SIMPLE_REPLY_SIZE) {
          this.#head = Buffer.from(data.subarray(pos));
          return;
        }
        const error = data.readUInt32BE(pos + 4);
        const handle = this.#handleAt(data, pos + 8);
        pos += NBD_SIMPLE_REPLY_SIZE;
        this.#onSimpleReply(error, handle);
      } else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
        if (avail < NBD_STRUCTURED_REPLY_HEADER_SIZE) {
          this.#head = Buffer.from(data.subarray(pos));
          return;
        }
        const flags = data.readUInt16BE(pos + 4);
        const type = data.readUInt16BE(pos + 6);
        const handle = this.#handleAt(data, pos + 8);
        const length = data.readUInt32BE(pos + 16);
        pos += NBD_STRUCTURED_REPLY_HEADER_SIZE;
        this.#onChunk(flags, type, handle, length);
      } else {
        this.#violation(`reply magic 0x${magic.toString(16)}`, 'BM_ERR_BAD_MAGIC');
      }
    }
  }

  /** The request of a reply's handle (we only use the low 32 bits), or -1. */
  #handleAt(data: Buffer, at: number): number {
    return data.readUInt32BE(at) === 0 ? data.readUInt32BE(at + 4) : -1;
  }

  #lookup(handle: number): Pending | undefined {
    const p = this.#pending.get(handle);
    if (p === undefined) this.#violation(`reply to unknown handle ${handle}`);
    return p;
  }

  #onSimpleReply(error: number, handle: number): void {
    const p = this.#lookup(handle);
    if (p === undefined) return;
    if (error !== 0) {
      p.error = { errno: error, message: '' };
      this.#settle(p);
      return;
    }
    const { cmd } = p;
    if (cmd.type === NBD_CMD_READ && cmd.length > 0) {
      this.#expect(cmd.target!, 0, cmd.length, () => {
        p.covered = cmd.length;
        this.#settle(p);
      });
      return;
    }
    if (cmd.type === NBD_CMD_BLOCK_STATUS) {
      this.#violation('a simple reply to NBD_CMD_BLOCK_STATUS');
      return;
    }
    this.#settle(p);
  }

  #onChunk(flags: number, type: number, handle: number, length: number): void {
    const p = this.#lookup(handle);
    if (p === undefined) return;
    const done = (flags & NBD_REPLY_FLAG_DONE) !== 0;
    const { cmd } = p;
    const finish = (): void => {
      if (done) this.#settle(p);
    };
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0 || !done) {
          this.#violation('NBD_REPLY_TYPE_NONE with a payload or without DONE');
          return;
        }
        this.#settle(p);
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA: {
        if (cmd.type !== NBD_CMD_READ || length < 9) {
          this.#violation(`OFFSET_DATA chunk of ${length} bytes to ${commandName(cmd.type)}`);
          return;
        }
        const head = Buffer.allocUnsafe(8);
        this.#expect(head, 0, 8, () => {
          const at = readOffset(head, 0) - cmd.offset;
          const dataLength = length - 8;
          if (at < 0 || at + dataLength > cmd.length) {
            this.#violation('OFFSET_DATA outside the requested range');
            return;
          }
          p.covered += dataLength;
          this.#expect(cmd.target!, at, at + dataLength, finish);
        });
        return;
      }
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (cmd.type !== NBD_CMD_READ || length !== 12) {
          this.#violation(`OFFSET_HOLE chunk of ${length} bytes to ${commandName(cmd.type)}`);
          return;
        }
        const body = Buffer.allocUnsafe(12);
        this.#expect(body, 0, 12, () => {
          const at = readOffset(body, 0) - cmd.offset;
          const size = body.readUInt32BE(8);
          if (size === 0 || at < 0 || at + size > cmd.length) {
            this.#violation('OFFSET_HOLE outside the requested range');
            return;
          }
          cmd.target!.fill(0, at, at + size);
          p.covered += size;
          finish();
        });
        return;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (cmd.type !== NBD_CMD_BLOCK_STATUS || length < 12 || (length - 4) % 8 !== 0 || length > MAX_STATUS_CHUNK) {
          this.#violation(`BLOCK_STATUS chunk of ${length} bytes to ${commandName(cmd.type)}`);
          return;
        }
        const body = Buffer.allocUnsafe(length);
        this.#expect(body, 0, length, () => {
          if (body.readUInt32BE(0) === this.negotiated.allocationContext) {
            const extents: RawExtent[] = [];
            for (let at = 4; at < length; at += 8) {
              const extentLength = body.readUInt32BE(at);
              if (extentLength === 0) {
                this.#violation('a BLOCK_STATUS extent of length 0');
                return;
              }
              extents.push({ length: extentLength, flags: body.readUInt32BE(at + 4) });
            }
            p.extents = extents;
          }
          finish();
        });
        return;
      }
      default: {
        if ((type & 0x8000) === 0) {
          this.#violation(`unknown reply chunk type ${type}`);
          return;
        }
        if (length < 6 || length > MAX_ERROR_CHUNK) {
          this.#violation(`error chunk of ${length} bytes`);
          return;
        }
        const body = Buffer.allocUnsafe(length);
        this.#expect(body, 0, length, () => {
          const errno = body.readUInt32BE(0);
          const messageLength = body.readUInt16BE(4);
          if (messageLength > length - 6) {
            this.#violation('error chunk message longer than the chunk');
            return;
          }
          p.error ??= { errno: errno === 0 ? NBD_EIO : errno, message: body.toString('utf8', 6, 6 + messageLength) };
          finish();
        });
      }
    }
  }

  #settle(p: Pending): void {
    const { cmd } = p;
    if (p.error === undefined) {
      if (cmd.type === NBD_CMD_READ && p.covered !== cmd.length) {
        this.#violation(`the reply to a read of ${cmd.length} bytes carried ${p.covered}`);
        return;
      }
      if (cmd.type === NBD_CMD_BLOCK_STATUS && p.extents === undefined) {
        this.#violation('NBD_CMD_BLOCK_STATUS succeeded without extents for base:allocation');
        return;
      }
    }
    this.#pending.delete(p.handle);
    if (this.#pending.size === 0) this.emit('idle');
    if (p.error !== undefined) {
      p.reject(errorForNbdReply(p.error.errno, p.error.message, { op: commandName(cmd.type), offset: cmd.offset, length: cmd.length }));
      return;
    }
    p.resolve(p.extents);
  }
}

function readOffset(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x100000000 + b.readUInt32BE(at + 4);
}
