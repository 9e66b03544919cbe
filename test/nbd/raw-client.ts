/**
 * Test helpers for the NBD server: a byte-level NBD client on a raw socket
 * (so tests can send exactly the bytes they want, including garbage), and a
 * backend wrapper that counts calls and can hold them at a gate.
 */
import net from 'node:net';
import { EventEmitter } from 'eventemitter3';
import type { NbdBackend, NbdWriteZeroesOptions } from '../../src/nbd/export.js';
import * as P from '../../src/nbd/protocol.js';

/** A raw TCP client that buffers what the server sends and lets the test read exact byte counts. */
export class RawClient {
  readonly socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #waiters: (() => void)[] = [];
  #closed = false;
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, chunk]);
      this.#wake();
    });
    socket.on('error', () => {
      // resets are expected in hostile tests; 'close' follows
    });
    this.closed = new Promise<void>((resolve) => {
      socket.on('close', () => {
        this.#closed = true;
        this.#wake();
        resolve();
      });
    });
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.#buf.length;
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Resolves with exactly `n` bytes; rejects if the connection closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.#closed) throw new Error(`connection closed with ${this.#buf.length}/${n} bytes received`);
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Writes bytes; resolves when handed to the kernel (or immediately if the socket is gone). */
  write(data: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) {
        resolve();
        return;
      }
      this.socket.write(data, () => resolve());
    });
  }

  /** Waits for the server to close the connection and returns what it sent that was not read. */
  async waitClosed(): Promise<Buffer> {
    await this.closed;
    const rest = this.#buf;
    this.#buf = Buffer.alloc(0);
    return rest;
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ------------------------------------------------------------ handshake

  /** Reads the 18-byte greeting and returns the handshake flags. */
  async greeting(): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== P.NBD_INIT_MAGIC) throw new Error('bad NBDMAGIC');
    if (g.readBigUInt64BE(8) !== P.NBD_OPTS_MAGIC) throw new Error('bad IHAVEOPT');
    return g.readUInt16BE(16);
  }

  /** Greeting + client flags (fixed newstyle and no-zeroes by default). */
  async handshake(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const flags = await this.greeting();
    await this.write(u32(clientFlags));
    return flags;
  }

  sendOption(option: number, data: Uint8Array = Buffer.alloc(0), lengthOverride?: number): Promise<void> {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(lengthOverride ?? data.length, 12);
    return this.write(Buffer.concat([h, data]));
  }

  /** Reads one option reply. */
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== P.NBD_REP_MAGIC) throw new Error('bad option reply magic');
    const length = h.readUInt32BE(16);
    const data = Buffer.from(await this.read(length));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /**
   * Sends NBD_OPT_INFO or NBD_OPT_GO and collects replies up to the final one.
   * Returns the final reply type and the info replies by type.
   */
  async infoOrGo(
    option: number,
    name: string,
    requests: readonly number[] = [],
  ): Promise<{ final: number; infos: Map<number, Buffer>; finalData: Buffer }> {
    const n = Buffer.from(name, 'utf8');
    const data = Buffer.alloc(4 + n.length + 2 + 2 * requests.length);
    data.writeUInt32BE(n.length, 0);
    n.copy(data, 4);
    data.writeUInt16BE(requests.length, 4 + n.length);
    requests.forEach((r, i) => data.writeUInt16BE(r, 6 + n.length + 2 * i));
    await this.sendOption(option, data);
    const infos = new Map<number, Buffer>();
    for (;;) {
      const r = await this.optionReply();
      if (r.option !== option) throw new Error(`reply for option ${r.option}, expected ${option}`);
      if (r.type === P.NBD_REP_INFO) {
        infos.set(r.data.readUInt16BE(0), r.data);
        continue;
      }
      return { final: r.type, infos, finalData: r.data };
    }
  }

  /**
   * Sends NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT and collects
   * the contexts (id, name) up to the final reply.
   */
  async metaContext(option: number, name: string, queries: readonly string[]): Promise<{ final: number; contexts: Array<{ id: number; name: string }> }> {
    await this.sendOption(option, RawClient.metaContextData(name, queries));
    const contexts: Array<{ id: number; name: string }> = [];
    for (;;) {
      const r = await this.optionReply();
      if (r.option !== option) throw new Error(`reply for option ${r.option}, expected ${option}`);
      if (r.type === P.NBD_REP_META_CONTEXT) {
        contexts.push({ id: r.data.readUInt32BE(0), name: r.data.subarray(4).toString('utf8') });
        continue;
      }
      return { final: r.type, contexts };
    }
  }

  /** Option data of the meta-context options: name, then the queries. */
  static metaContextData(name: string, queries: readonly string[]): Buffer {
    const parts = [u32(Buffer.byteLength(name)), Buffer.from(name, 'utf8'), u32(queries.length)];
    for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q, 'utf8'));
    return Buffer.concat(parts);
  }

  /** Full handshake into transmission with NBD_OPT_GO; returns size and transmission flags. */
  async go(name: string, opts: { structured?: boolean; allocation?: boolean } = {}): Promise<{ size: number; flags: number; context?: number }> {
    await this.handshake();
    if (opts.structured === true || opts.allocation === true) {
      await this.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      const r = await this.optionReply();
      if (r.type !== P.NBD_REP_ACK) throw new Error(`structured reply refused: ${r.type}`);
    }
    let context: number | undefined;
    if (opts.allocation === true) {
      const r = await this.metaContext(P.NBD_OPT_SET_META_CONTEXT, name, [P.NBD_META_BASE_ALLOCATION]);
      if (r.final !== P.NBD_REP_ACK || r.contexts.length !== 1) throw new Error(`base:allocation not selected: ${r.final}`);
      context = r.contexts[0]!.id;
    }
    const { final, infos } = await this.infoOrGo(P.NBD_OPT_GO, name, [P.NBD_INFO_BLOCK_SIZE]);
    if (final !== P.NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed with 0x${final.toString(16)}`);
    const exp = infos.get(P.NBD_INFO_EXPORT);
    if (exp === undefined) throw new Error('no NBD_INFO_EXPORT');
    return { size: Number(exp.readBigUInt64BE(2)), flags: exp.readUInt16BE(10), ...(context === undefined ? {} : { context }) };
  }

  // --------------------------------------------------------- transmission

  /** Encodes a request (header + payload). */
  static request(type: number, handle: number, offset: number, length: number, flags = 0, payload?: Uint8Array): Buffer {
    const h = P.encodeRequestHeader(type, flags, handle, offset, length);
    return payload === undefined ? h : Buffer.concat([h, payload]);
  }

  sendRequest(type: number, handle: number, offset: number, length: number, flags = 0, payload?: Uint8Array): Promise<void> {
    return this.write(RawClient.request(type, handle, offset, length, flags, payload));
  }

  /** Reads a simple reply; `dataLength` bytes of data follow when error is 0 (reads). */
  async simpleReply(dataLength = 0): Promise<{ error: number; handle: number; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== P.NBD_SIMPLE_REPLY_MAGIC) throw new Error(`bad simple reply magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const handle = Number(h.readBigUInt64BE(8));
    const data = error === 0 && dataLength > 0 ? Buffer.from(await this.read(dataLength)) : Buffer.alloc(0);
    return { error, handle, data };
  }

  /** Reads one structured reply chunk. */
  async structuredChunk(): Promise<{ flags: number; type: number; handle: number; payload: Buffer }> {
    const h = await this.read(20);
    if (h.readUInt32BE(0) !== P.NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad structured reply magic 0x${h.readUInt32BE(0).toString(16)}`);
    const length = h.readUInt32BE(16);
    return {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      handle: Number(h.readBigUInt64BE(8)),
      payload: Buffer.from(await this.read(length)),
    };
  }

  /**
   * NBD_CMD_BLOCK_STATUS and its structured reply: the extents of the one
   * BLOCK_STATUS chunk (context id, then length/flags pairs), or the error.
   */
  async blockStatus(handle: number, offset: number, length: number, flags = 0): Promise<{ error: number; context?: number; extents: Array<[number, number]> }> {
    await this.sendRequest(P.NBD_CMD_BLOCK_STATUS, handle, offset, length, flags);
    const extents: Array<[number, number]> = [];
    let context: number | undefined;
    let error = 0;
    for (;;) {
      const c = await this.structuredChunk();
      if (c.handle !== handle) throw new Error(`chunk for handle ${c.handle}, expected ${handle}`);
      if (c.type === P.NBD_REPLY_TYPE_BLOCK_STATUS) {
        context = c.payload.readUInt32BE(0);
        for (let at = 4; at < c.payload.length; at += 8) extents.push([c.payload.readUInt32BE(at), c.payload.readUInt32BE(at + 4)]);
      } else if (c.type === P.NBD_REPLY_TYPE_ERROR) {
        error = c.payload.readUInt32BE(0);
      } else if (c.type !== P.NBD_REPLY_TYPE_NONE) {
        throw new Error(`unexpected chunk type ${c.type}`);
      }
      if ((c.flags & P.NBD_REPLY_FLAG_DONE) !== 0) return { error, extents, ...(context === undefined ? {} : { context }) };
    }
  }

  /** A write then its reply error. */
  async writeAt(handle: number, offset: number, data: Uint8Array, flags = 0): Promise<number> {
    await this.sendRequest(P.NBD_CMD_WRITE, handle, offset, data.length, flags, data);
    const r = await this.simpleReply();
    if (r.handle !== handle) throw new Error(`reply for handle ${r.handle}, expected ${handle}`);
    return r.error;
  }

  /** A read then its reply (simple replies). */
  async readAt(handle: number, offset: number, length: number): Promise<{ error: number; data: Buffer }> {
    await this.sendRequest(P.NBD_CMD_READ, handle, offset, length);
    const r = await this.simpleReply(length);
    if (r.handle !== handle) throw new Error(`reply for handle ${r.handle}, expected ${handle}`);
    return r;
  }

  /** Sends NBD_CMD_DISC and waits for the server to close. */
  async disconnect(): Promise<void> {
    await this.sendRequest(P.NBD_CMD_DISC, 0, 0, 0);
    await this.closed;
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

type GatedOp = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes';

/**
 * A backend wrapper that counts calls, tracks concurrency, and can hold
 * operations of chosen kinds until `release()`.
 */
export class GatedBackend extends EventEmitter<{ start: [op: GatedOp, offset: number, length: number] }> implements NbdBackend {
  readonly inner: NbdBackend;
  readonly calls: { op: GatedOp; offset: number; length: number; fua: boolean }[] = [];
  active = 0;
  maxActive = 0;
  /** Highest number of concurrent calls, per kind of operation. */
  readonly maxActiveOf = new Map<GatedOp, number>();
  readonly #activeOf = new Map<GatedOp, number>();
  #held = new Set<GatedOp>();
  #gate: Promise<void> | undefined;
  #open: (() => void) | undefined;
  /** Remove writeZeroes to exercise the server's fallback. */
  writeZeroes?: (offset: number, length: number, options?: NbdWriteZeroesOptions) => Promise<void>;
  trim?: (offset: number, length: number) => Promise<void>;

  constructor(inner: NbdBackend, opts: { writeZeroes?: boolean; trim?: boolean } = {}) {
    super();
    this.inner = inner;
    if (opts.writeZeroes === true) {
      this.writeZeroes = (offset, length, options) =>
        this.#run('writeZeroes', offset, length, options?.fua === true, () => this.inner.write(offset, Buffer.alloc(length)));
    }
    if (opts.trim !== false && inner.trim !== undefined) {
      this.trim = (offset, length) => this.#run('trim', offset, length, false, () => this.inner.trim!(offset, length));
    }
  }

  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get supports(): NbdBackend['supports'] {
    return this.inner.supports;
  }

  /** Holds the given kinds of operations (all when none given) until `release()`. */
  hold(...ops: GatedOp[]): void {
    const list: GatedOp[] = ops.length > 0 ? ops : ['read', 'write', 'flush', 'trim', 'writeZeroes'];
    for (const o of list) this.#held.add(o);
    this.#gate ??= new Promise<void>((resolve) => {
      this.#open = resolve;
    });
  }

  release(): void {
    this.#held.clear();
    this.#open?.();
    this.#gate = undefined;
    this.#open = undefined;
  }

  count(op: GatedOp): number {
    return this.calls.filter((c) => c.op === op).length;
  }

  /** Resolves once `n` operations have started in total. */
  async started(n: number): Promise<void> {
    while (this.calls.length < n) await new Promise<void>((resolve) => this.once('start', () => resolve()));
  }

  async #run<T>(op: GatedOp, offset: number, length: number, fua: boolean, fn: () => Promise<T>): Promise<T> {
    this.calls.push({ op, offset, length, fua });
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    const n = (this.#activeOf.get(op) ?? 0) + 1;
    this.#activeOf.set(op, n);
    this.maxActiveOf.set(op, Math.max(n, this.maxActiveOf.get(op) ?? 0));
    this.emit('start', op, offset, length);
    try {
      if (this.#held.has(op) && this.#gate !== undefined) await this.#gate;
      return await fn();
    } finally {
      this.active--;
      this.#activeOf.set(op, (this.#activeOf.get(op) ?? 1) - 1);
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.#run('read', offset, length, false, () => this.inner.read(offset, length));
  }

  write(offset: number, data: Uint8Array, options?: { fua?: boolean }): Promise<void> {
    // Copy: the server may hand a view of its input buffer.
    const copy = Buffer.from(data);
    return this.#run('write', offset, data.length, options?.fua === true, () => this.inner.write(offset, copy, options));
  }

  flush(): Promise<void> {
    return this.#run('flush', 0, 0, false, () => this.inner.flush());
  }
}
