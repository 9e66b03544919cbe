/**
 * A {@link TransportConnection} driven by the fuzzer: `feed()` delivers
 * bytes as if they came from the peer; what the code under test writes is
 * counted (and kept when asked). Closing is immediate.
 */
import { EventEmitter } from 'eventemitter3';
import type { TransportAddress, TransportConnection, TransportConnectionEvents } from '../../src/transport/transport.js';

export class StubConnection extends EventEmitter<TransportConnectionEvents> implements TransportConnection {
  readonly remoteAddress: TransportAddress = { host: '192.0.2.1', port: 4242 };
  readonly localAddress: TransportAddress = { host: '192.0.2.2', port: 7000 };
  closed = false;
  bytesWritten = 0;
  readonly written: Buffer[] = [];
  readonly #keep: boolean;
  onWrite: ((chunks: readonly Uint8Array[]) => void) | undefined;

  constructor(keep = false) {
    super();
    this.#keep = keep;
  }

  get bufferedAmount(): number {
    return 0;
  }

  write(chunks: readonly Uint8Array[]): boolean {
    if (this.closed) return false;
    for (const c of chunks) {
      this.bytesWritten += c.byteLength;
      if (this.#keep) this.written.push(Buffer.from(c));
    }
    this.onWrite?.(chunks);
    return true;
  }

  /** Delivers bytes from the peer (ignored once closed). */
  feed(chunk: Buffer): void {
    if (!this.closed && chunk.length > 0) this.emit('data', chunk);
  }

  pause(): void {}
  resume(): void {}

  end(): void {
    this.destroy();
  }

  destroy(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', error);
  }
}

/** Lets promise chains and immediates run (no timers). */
export async function settle(turns = 4): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
