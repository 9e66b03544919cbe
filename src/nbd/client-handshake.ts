/**
 * The client side of the NBD fixed-newstyle handshake: structured replies,
 * the `base:allocation` metadata context, then `NBD_OPT_GO` with
 * `NBD_INFO_BLOCK_SIZE` (falling back to `NBD_OPT_EXPORT_NAME` for servers
 * without `GO`).
 *
 * @module
 */
import type net from 'node:net';
import { BlockMirrorError } from '../errors.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_META_BASE_ALLOCATION,
  NBD_OLDSTYLE_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  optionName,
} from './protocol.js';

/** Longest option reply the client accepts (names, descriptions and messages are at most 4 KiB). */
const MAX_OPTION_REPLY = 64 * 1024;
const EMPTY = Buffer.alloc(0);

/** What the handshake agreed on. The socket is left paused: its next reader resumes it. */
export interface NbdNegotiated {
  /** Export size in bytes. */
  size: number;
  /** Transmission flags (`NBD_FLAG_*`). */
  flags: number;
  /** Structured replies were negotiated. */
  structured: boolean;
  /** Metadata context id of `base:allocation`, when the server selected it. */
  allocationContext: number | undefined;
  /** Block size constraints from `NBD_INFO_BLOCK_SIZE`, when the server sent them. */
  blockSizes: { minimum: number; preferred: number; maximum: number } | undefined;
  /** Bytes received after the handshake (the start of the transmission stream). */
  leftover: Buffer;
}

/** Options of {@link negotiate}. */
export interface NegotiateOptions {
  /** Ask for structured replies (default true). */
  structured?: boolean;
  /** Select `base:allocation` (needs structured replies; default true). */
  allocation?: boolean;
}

/** Reads exact byte counts from a socket during the handshake. */
class HandshakeReader {
  readonly #socket: net.Socket;
  #buf: Buffer = EMPTY;
  #ended: BlockMirrorError | undefined;
  #wake: (() => void) | undefined;
  readonly #onData = (chunk: Buffer): void => {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#notify();
  };
  readonly #onEnd = (): void => {
    this.#ended ??= new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the NBD server closed the connection during the handshake');
    this.#notify();
  };

  constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.#ended !== undefined) throw this.#ended;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Stops listening and pauses the socket (so nothing is lost before the next reader); returns what was received and not read. */
  detach(): Buffer {
    this.#socket.pause();
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onEnd);
    const rest = this.#buf;
    this.#buf = EMPTY;
    return rest;
  }
}

function protocolError(message: string, details: Record<string, unknown> = {}): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_PROTOCOL', `NBD server: ${message}`, { details });
}

function option(code: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(code, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

function nameField(name: Buffer): Buffer {
  const b = Buffer.allocUnsafe(4 + name.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  return b;
}

interface OptionReply {
  type: number;
  data: Buffer;
}

async function readOptionReply(reader: HandshakeReader, expected: number): Promise<OptionReply> {
  const h = await reader.read(20);
  if (h.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new BlockMirrorError('BM_ERR_BAD_MAGIC', 'NBD server: option reply with a wrong magic');
  const opt = h.readUInt32BE(8);
  if (opt !== expected) throw protocolError(`reply to ${optionName(opt)} while ${optionName(expected)} was asked`, { option: opt });
  const length = h.readUInt32BE(16);
  if (length > MAX_OPTION_REPLY) throw protocolError(`option reply of ${length} bytes`, { length });
  return { type: h.readUInt32BE(12), data: Buffer.from(await reader.read(length)) };
}

function replyText(reply: OptionReply): string {
  return reply.data.length === 0 ? '' : `: ${reply.data.toString('utf8').slice(0, 200)}`;
}

/** The coded error for a failed `NBD_OPT_GO`. */
function goError(reply: OptionReply, exportName: string): BlockMirrorError {
  const details = { export: exportName, reply: reply.type };
  const text = replyText(reply);
  switch (reply.type) {
    case NBD_REP_ERR_UNKNOWN:
      return new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `the NBD server has no export ${JSON.stringify(exportName)}${text}`, { details });
    case NBD_REP_ERR_TLS_REQD:
      return new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `the NBD server requires TLS, which blockmirror does not speak${text}`, { details });
    case NBD_REP_ERR_POLICY:
      return new BlockMirrorError('BM_ERR_CONNECT_FAILED', `the NBD server refused export ${JSON.stringify(exportName)} by policy${text}`, { details });
    case NBD_REP_ERR_SHUTDOWN:
      return new BlockMirrorError('BM_ERR_DEVICE_UNAVAILABLE', `the NBD server is shutting down${text}`, { details });
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
      return protocolError('demanded NBD_INFO_BLOCK_SIZE, which was requested', details);
    default:
      return new BlockMirrorError('BM_ERR_CONNECT_FAILED', `the NBD server refused export ${JSON.stringify(exportName)} (reply 0x${reply.type.toString(16)})${text}`, {
        details,
      });
  }
}

/**
 * Runs the fixed-newstyle handshake on a connected socket and enters
 * transmission on `exportName`. The caller handles timeouts (by destroying
 * the socket, which rejects the handshake with `BM_ERR_CONNECTION_CLOSED`).
 *
 * @throws {BlockMirrorError} `BM_ERR_BAD_MAGIC` / `BM_ERR_PROTOCOL` for a
 *   server that does not speak fixed newstyle NBD correctly;
 *   `BM_ERR_UNKNOWN_VOLUME` when the export does not exist;
 *   `BM_ERR_NOT_SUPPORTED` when the server requires TLS;
 *   `BM_ERR_CONNECTION_CLOSED` when the server hangs up.
 */
export async function negotiate(socket: net.Socket, exportName: string, options: NegotiateOptions = {}): Promise<NbdNegotiated> {
  const reader = new HandshakeReader(socket);
  const send = (b: Buffer): void => {
    socket.write(b);
  };
  try {
    const greeting = await reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_INIT_MAGIC) throw new BlockMirrorError('BM_ERR_BAD_MAGIC', 'the peer is not an NBD server (no NBDMAGIC)');
    const second = greeting.readBigUInt64BE(8);
    if (second === NBD_OLDSTYLE_MAGIC) throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'the NBD server speaks the oldstyle handshake only');
    if (second !== NBD_OPTS_MAGIC) throw new BlockMirrorError('BM_ERR_BAD_MAGIC', 'the NBD server sent neither IHAVEOPT nor the oldstyle magic');
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) {
      throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'the NBD server does not speak the fixed newstyle handshake');
    }
    const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
    const clientFlags = Buffer.allocUnsafe(4);
    clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0), 0);
    send(clientFlags);

    let structured = false;
    if (options.structured !== false) {
      send(option(NBD_OPT_STRUCTURED_REPLY));
      const r = await readOptionReply(reader, NBD_OPT_STRUCTURED_REPLY);
      structured = r.type === NBD_REP_ACK;
      // any error (UNSUP from older servers): simple replies
    }

    const name = Buffer.from(exportName, 'utf8');
    let allocationContext: number | undefined;
    if (structured && options.allocation !== false) {
      const query = Buffer.from(NBD_META_BASE_ALLOCATION, 'utf8');
      const data = Buffer.concat([nameField(name), Buffer.from([0, 0, 0, 1]), nameField(query)]);
      send(option(NBD_OPT_SET_META_CONTEXT, data));
      for (;;) {
        const r = await readOptionReply(reader, NBD_OPT_SET_META_CONTEXT);
        if (r.type === NBD_REP_META_CONTEXT) {
          if (r.data.length < 4) throw protocolError('NBD_REP_META_CONTEXT shorter than 4 bytes');
          if (r.data.subarray(4).toString('utf8') === NBD_META_BASE_ALLOCATION) allocationContext = r.data.readUInt32BE(0);
          continue;
        }
        // ACK ends the list; an error (UNSUP, or the export is unknown: GO reports it) selects nothing
        if (r.type !== NBD_REP_ACK) allocationContext = undefined;
        break;
      }
    }

    const go = Buffer.concat([nameField(name), Buffer.from([0, 1]), Buffer.from([0, NBD_INFO_BLOCK_SIZE])]);
    send(option(NBD_OPT_GO, go));
    let size: number | undefined;
    let flags = 0;
    let blockSizes: NbdNegotiated['blockSizes'];
    for (;;) {
      const r = await readOptionReply(reader, NBD_OPT_GO);
      if (r.type === NBD_REP_INFO) {
        if (r.data.length < 2) throw protocolError('NBD_REP_INFO shorter than 2 bytes');
        const info = r.data.readUInt16BE(0);
        if (info === NBD_INFO_EXPORT) {
          if (r.data.length !== 12) throw protocolError('NBD_INFO_EXPORT of a wrong length');
          size = readSize(r.data.readBigUInt64BE(2));
          flags = r.data.readUInt16BE(10);
        } else if (info === NBD_INFO_BLOCK_SIZE) {
          if (r.data.length !== 14) throw protocolError('NBD_INFO_BLOCK_SIZE of a wrong length');
          blockSizes = { minimum: r.data.readUInt32BE(2), preferred: r.data.readUInt32BE(6), maximum: r.data.readUInt32BE(10) };
        }
        continue;
      }
      if (r.type === NBD_REP_ACK) {
        if (size === undefined) throw protocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
        break;
      }
      if (r.type === NBD_REP_ERR_UNSUP) {
        // a server without GO: the old way (cannot report errors, it just hangs up)
        ({ size, flags } = await exportName_(reader, send, name, noZeroes, exportName));
        allocationContext = undefined;
        break;
      }
      send(option(NBD_OPT_ABORT));
      throw goError(r, exportName);
    }
    if (blockSizes !== undefined) checkBlockSizes(blockSizes);
    return { size, flags, structured, allocationContext, blockSizes, leftover: reader.detach() };
  } finally {
    reader.detach();
  }
}

async function exportName_(
  reader: HandshakeReader,
  send: (b: Buffer) => void,
  name: Buffer,
  noZeroes: boolean,
  exportName: string,
): Promise<{ size: number; flags: number }> {
  send(option(NBD_OPT_EXPORT_NAME, name));
  let reply: Buffer;
  try {
    reply = await reader.read(noZeroes ? 10 : 134);
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `the NBD server closed the connection on NBD_OPT_EXPORT_NAME ${JSON.stringify(exportName)} (no such export?)`, {
      cause: error,
      details: { export: exportName },
    });
  }
  return { size: readSize(reply.readBigUInt64BE(0)), flags: reply.readUInt16BE(8) };
}

function readSize(size: bigint): number {
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`export size ${size} is larger than 2^53 - 1`);
  return Number(size);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(Math.log2(n));
}

function checkBlockSizes(b: { minimum: number; preferred: number; maximum: number }): void {
  if (!isPowerOfTwo(b.minimum) || b.minimum > 65536) throw protocolError(`minimum block size ${b.minimum} is not a power of two up to 65536`, b);
  if (b.maximum < b.minimum) throw protocolError(`maximum payload ${b.maximum} is below the minimum block size ${b.minimum}`, b);
}
