/**
 * Splits one datagram channel into per-peer views: a mirror target receives
 * the heartbeats of all its primaries on its one UDP port, and gives each
 * primary's link monitor a view that only sees that primary's datagrams.
 *
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import type { DatagramChannel, DatagramChannelEvents, TransportAddress } from '../transport/transport.js';

function key(a: TransportAddress): string {
  return `${a.host}|${a.port}`;
}

/** A view of a {@link DatagramChannel} limited to one remote address. */
class PeerView extends EventEmitter<DatagramChannelEvents> implements DatagramChannel {
  readonly #demux: DatagramDemux;
  readonly #key: string;

  constructor(demux: DatagramDemux, k: string) {
    super();
    this.#demux = demux;
    this.#key = k;
  }

  get address(): TransportAddress {
    return this.#demux.channel.address;
  }

  send(data: Uint8Array, to: TransportAddress): void {
    this.#demux.channel.send(data, to);
  }

  /** Detaches the view (the shared channel stays open). */
  async close(): Promise<void> {
    this.#demux.detach(this.#key, this);
  }
}

/** Routes datagrams of one channel to per-peer views by source address. */
export class DatagramDemux {
  readonly channel: DatagramChannel;
  readonly #views = new Map<string, PeerView>();
  /** Datagrams from addresses without a view. */
  unrouted = 0;

  /** `onUnrouted` sees datagrams from addresses without a view. */
  constructor(channel: DatagramChannel, onUnrouted?: (data: Buffer, from: TransportAddress) => void) {
    this.channel = channel;
    channel.on('message', (data, from) => {
      const view = this.#views.get(key(from));
      if (view !== undefined) view.emit('message', data, from);
      else {
        this.unrouted++;
        onUnrouted?.(data, from);
      }
    });
  }

  /** A channel that sees only datagrams from `peer` (replacing an earlier view of the same peer). */
  view(peer: TransportAddress): DatagramChannel {
    const k = key(peer);
    const view = new PeerView(this, k);
    this.#views.set(k, view);
    return view;
  }

  /** @internal */
  detach(k: string, view: PeerView): void {
    if (this.#views.get(k) === view) this.#views.delete(k);
  }
}
