/**
 * Revocable views of a node's durable state (journal, pair state store,
 * bitmap) and of its network access: when a simulated process dies, its views
 * are revoked so that nothing it still runs can change the node's "disk" or
 * reach the network — and the next incarnation opens fresh views on the same
 * state.
 *
 * @module
 */
import type { Journal, JournalEntry, JournalStats, PendingJournalEntry } from '../../journal/journal.js';
import type { PairState, PairStateStore } from '../../replication/pair-state.js';
import type { DirtyBitmap } from '../../resync/dirty-bitmap.js';
import type {
  ConnectOptions,
  DatagramChannel,
  Transport,
  TransportAddress,
  TransportConnection,
  TransportServer,
} from '../../transport/transport.js';
import { BlockMirrorError } from '../../errors.js';

/** A never-settling promise: what a dead process waits for. */
export function frozen<T>(): Promise<T> {
  return new Promise<T>(() => {});
}

/** Something a simulated process holds that dies with it. */
export interface Revocable {
  revoke(): void;
}

/**
 * A journal view for one process: forwards to the node's journal (which
 * outlives the process, as a journal file does) until revoked; `close()`
 * closes the view only. Models a journal whose appends are durable when
 * they resolve (fsync `always`) and whose releases are durable at once.
 */
export class JournalView implements Journal, Revocable {
  readonly #journal: Journal;
  #revoked = false;
  #closed = false;

  /** Told of every append the running incarnation makes (the simulator learns which seq a request took). */
  onAppend: ((entry: JournalEntry) => void) | undefined;

  constructor(journal: Journal) {
    this.#journal = journal;
  }

  revoke(): void {
    this.#revoked = true;
  }

  /** Appends through to the journal; never settles once revoked. */
  append(entry: JournalEntry): Promise<void> {
    if (this.#revoked) return frozen();
    if (this.#closed) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed'));
    this.onAppend?.(entry);
    return this.#journal.append(entry).then(
      () => (this.#revoked ? frozen<void>() : undefined),
      (error: unknown) => (this.#revoked ? frozen<void>() : Promise.reject(error)),
    );
  }

  release(seq: number): void {
    if (!this.#revoked && !this.#closed) this.#journal.release(seq);
  }

  /** The journal's pending entries; stalls once revoked. */
  async *pending(afterSeq?: number): AsyncGenerator<PendingJournalEntry, void, undefined> {
    for await (const entry of this.#journal.pending(afterSeq)) {
      if (this.#revoked) await frozen();
      yield entry;
    }
  }

  get size(): number {
    return this.#journal.size;
  }

  get pendingBytes(): number {
    return this.#journal.pendingBytes;
  }

  /** The journal's highest appended seq. */
  get lastSeq(): number {
    return this.#journal.lastSeq;
  }

  stats(): JournalStats {
    return this.#journal.stats();
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }
}

/**
 * A small-state store (pair state, stream, apply state) seen by one
 * process: forwards until revoked; afterwards its calls never settle.
 */
export class StoreView<T> implements Revocable {
  readonly #store: { load(): Promise<T | undefined>; save(state: T): Promise<void> };
  #revoked = false;

  constructor(store: { load(): Promise<T | undefined>; save(state: T): Promise<void> }) {
    this.#store = store;
  }

  revoke(): void {
    this.#revoked = true;
  }

  load(): Promise<T | undefined> {
    if (this.#revoked) return frozen();
    return this.#store.load();
  }

  save(state: T): Promise<void> {
    if (this.#revoked) return frozen();
    return this.#store.save(state);
  }
}

/** A pair state store seen by one process (see {@link StoreView}). */
export class PairStateStoreView extends StoreView<PairState> implements PairStateStore {}

/**
 * A dirty bitmap view for one process: a proxy that forwards everything
 * until revoked; afterwards mutations are ignored and `markDurable`/`flush`
 * never settle. `close()` closes nothing (the bitmap outlives the process).
 * Marks and clears are durable at once (the worst case for a clear).
 */
export function bitmapView(bitmap: DirtyBitmap): DirtyBitmap & Revocable {
  let revoked = false;
  const mutators = new Set(['mark', 'markAll', 'clear', 'clearRegion', 'clearAll', 'merge']);
  return new Proxy(bitmap as DirtyBitmap & Revocable, {
    get(target, prop, receiver) {
      if (prop === 'revoke') return () => (revoked = true);
      if (prop === 'close') return () => Promise.resolve();
      if (prop === 'markDurable' || prop === 'flush') {
        return (...args: unknown[]) => (revoked ? frozen() : (Reflect.get(target, prop, target) as (...a: unknown[]) => Promise<void>).apply(target, args));
      }
      const value: unknown = Reflect.get(target, prop, receiver === undefined ? target : target);
      if (typeof value !== 'function') return value;
      if (typeof prop === 'string' && mutators.has(prop)) {
        return (...args: unknown[]) => (revoked ? 0 : (value as (...a: unknown[]) => unknown).apply(target, args));
      }
      return (value as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

/**
 * A transport view for one process (one host of a {@link MemoryNetwork}):
 * {@link revoke} closes its listeners and datagram channels and destroys
 * (`reset: true`, the kernel of a killed process answers with RST) or
 * abandons (a power loss: the peer hears nothing) its connections; later
 * calls never settle.
 */
export class TransportView implements Transport, Revocable {
  readonly #transport: Transport;
  readonly #servers = new Set<TransportServer>();
  readonly #channels = new Set<DatagramChannel>();
  readonly #connections = new Set<TransportConnection>();
  #revoked = false;
  /** What revoke does to open connections. */
  onRevoke: (connection: TransportConnection) => void = (c) => c.destroy();

  /** Host of the wrapped transport (a memory transport's `host`), if it has one. */
  readonly host: string | undefined;

  constructor(transport: Transport) {
    this.#transport = transport;
    const host = (transport as { host?: unknown }).host;
    this.host = typeof host === 'string' ? host : undefined;
  }

  get supports(): Transport['supports'] {
    return this.#transport.supports;
  }

  revoke(): void {
    if (this.#revoked) return;
    this.#revoked = true;
    for (const c of this.#connections) this.onRevoke(c);
    for (const s of this.#servers) void s.close();
    for (const c of this.#channels) void c.close();
  }

  async listen(address: TransportAddress): Promise<TransportServer> {
    if (this.#revoked) return frozen();
    const server = await this.#transport.listen(address);
    if (this.#revoked) {
      await server.close();
      return frozen();
    }
    this.#servers.add(server);
    server.on('connection', (c) => this.#track(c));
    return server;
  }

  async connect(address: TransportAddress, options?: ConnectOptions): Promise<TransportConnection> {
    if (this.#revoked) return frozen();
    const c = await this.#transport.connect(address, options);
    if (this.#revoked) {
      c.destroy();
      return frozen();
    }
    this.#track(c);
    return c;
  }

  async bindDatagram(address: TransportAddress): Promise<DatagramChannel> {
    if (this.#revoked || this.#transport.bindDatagram === undefined) return frozen();
    const channel = await this.#transport.bindDatagram(address);
    if (this.#revoked) {
      await channel.close();
      return frozen();
    }
    this.#channels.add(channel);
    return channel;
  }

  #track(c: TransportConnection): void {
    if (this.#revoked) {
      this.onRevoke(c);
      return;
    }
    this.#connections.add(c);
    c.once('close', () => this.#connections.delete(c));
  }
}

/**
 * What one incarnation of a simulated process holds — the revocable views of
 * its transport, devices and stores — ended together when it stops.
 */
export class ProcessFences {
  readonly #views: Revocable[] = [];
  #transport: TransportView | undefined;

  /** The incarnation's transport, on `inner` (revoked with the rest). */
  transport(inner: Transport): TransportView {
    const view = new TransportView(inner);
    this.#transport = view;
    this.#views.push(view);
    return view;
  }

  /** Views the incarnation was given. */
  hold(...views: Revocable[]): void {
    this.#views.push(...views);
  }

  /**
   * Revokes everything: the process is gone. `silence`: a power loss — its
   * open connections are not closed but go silent (the peer hears nothing).
   */
  revoke(silence?: (connection: TransportConnection) => void): void {
    if (silence !== undefined && this.#transport !== undefined) this.#transport.onRevoke = silence;
    for (const r of this.#views) r.revoke();
    this.#views.length = 0;
  }
}
