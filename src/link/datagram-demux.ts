/**
 * Splits one datagram channel into per-peer views: a mirror target receives
 * the heartbeats of all its primaries on its one UDP port, and gives each
 * primary's link monitor a view that only sees that primary's heartbeats.
 * Datagrams are routed by the sender's node id (not by source address, which
 * NAT or a relay may change); the monitor still verifies each one.
 *
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import type { DatagramChannel, DatagramChannelEvents, TransportAddress } from '../transport/transport.js';
import { decodeFrame } from '../codec/decoder.js';
import { HEARTBEAT_CODEC_LIMITS } from './heartbeat.js';

/** The node id a heartbeat datagram claims, or undefined when it is not one. */
function claimedNode(data: Buffer): string | undefined {
  try {
    const header = decodeFrame(data, { limits: HEARTBEAT_CODEC_LIMITS })?.header as { node?: unknown } | undefined;
    return typeof header?.node === 'string' ? header.node : undefined;
  } catch {
    return undefined;
  }
}

/** A view of a {@link DatagramChannel} limited to one peer node. */
class PeerView extends EventEmitter<DatagramChannelEvents> implements DatagramChannel {
  readonly #demux: DatagramDemux;
  readonly #node: string;

  constructor(demux: DatagramDemux, node: string) {
    super();
    this.#demux = demux;
    this.#node = node;
  }

  get address(): TransportAddress {
    return this.#demux.channel.address;
  }

  send(data: Uint8Array, to: TransportAddress): void {
    this.#demux.channel.send(data, to);
  }

  /** Detaches the view (the shared channel stays open). */
  async close(): Promise<void> {
    this.#demux.detach(this.#node, this);
  }
}

/** Routes heartbeat datagrams of one channel to per-node views. */
export class DatagramDemux {
  readonly channel: DatagramChannel;
  readonly #views = new Map<string, PeerView>();
  /** Datagrams for nodes without a view (or not heartbeats). */
  unrouted = 0;

  /** `onUnrouted` sees datagrams for which no view exists. */
  constructor(channel: DatagramChannel, onUnrouted?: (data: Buffer, from: TransportAddress) => void) {
    this.channel = channel;
    channel.on('message', (data, from) => {
      const node = claimedNode(data);
      const view = node === undefined ? undefined : this.#views.get(node);
      if (view !== undefined) view.emit('message', data, from);
      else {
        this.unrouted++;
        onUnrouted?.(data, from);
      }
    });
  }

  /** True when a view for `node` exists. */
  has(node: string): boolean {
    return this.#views.has(node);
  }

  /** A channel that sees only the datagrams of `node` (replacing an earlier view of the same node). */
  view(node: string): DatagramChannel {
    const view = new PeerView(this, node);
    this.#views.set(node, view);
    return view;
  }

  /** @internal */
  detach(node: string, view: PeerView): void {
    if (this.#views.get(node) === view) this.#views.delete(node);
  }
}
