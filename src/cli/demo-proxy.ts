/**
 * A small TCP (and UDP) relay on loopback that can cut and heal the link
 * between a primary and its mirror: real sockets, no mocks. Used by
 * `blockmirror demo` and by tests.
 *
 * @module
 */
import dgram from 'node:dgram';
import net from 'node:net';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';

const log = createDebug('blockmirror:proxy');

/** Options of {@link LinkProxy.start}. */
export interface LinkProxyOptions {
  /** Where traffic goes (the mirror target). */
  target: { host: string; port: number };
  /** Host to listen on (default `127.0.0.1`; the port is chosen freely). */
  host?: string;
  /**
   * Also relay UDP datagrams on the same port number (heartbeats use UDP on
   * the peer's port). Default true.
   */
  udp?: boolean;
}

/**
 * Relays TCP connections (and UDP datagrams) from its own port to `target`.
 * `cut()` destroys every relayed connection and refuses new ones (accepted
 * and closed at once; datagrams dropped) until `heal()`.
 */
export class LinkProxy {
  readonly #target: { host: string; port: number };
  readonly #server: net.Server;
  readonly #udp: dgram.Socket | undefined;
  readonly #udpPeers = new Map<string, dgram.Socket>();
  readonly #sockets = new Set<net.Socket>();
  #cut = false;
  #accepted = 0;
  #bytesToTarget = 0;
  #bytesFromTarget = 0;
  #refused = 0;

  private constructor(target: { host: string; port: number }, server: net.Server, udp: dgram.Socket | undefined) {
    this.#target = target;
    this.#server = server;
    this.#udp = udp;
    server.on('connection', (socket) => this.#accept(socket));
    udp?.on('message', (msg, rinfo) => this.#datagram(msg, rinfo));
  }

  /** Starts a proxy on a free port of `host` (the same port number for TCP and UDP). */
  static async start(options: LinkProxyOptions): Promise<LinkProxy> {
    const host = options.host ?? '127.0.0.1';
    const wantUdp = options.udp ?? true;
    for (let attempt = 0; ; attempt++) {
      const server = net.createServer();
      await listenTcp(server, host, 0);
      if (!wantUdp) return new LinkProxy(options.target, server, undefined);
      const port = (server.address() as net.AddressInfo).port;
      const udp = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
      try {
        await bindUdp(udp, host, port);
        return new LinkProxy(options.target, server, udp);
      } catch (error) {
        udp.close();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        // Someone holds that UDP port: take another TCP port (a few tries).
        if (attempt >= 5) throw toBlockMirrorError(error, 'BM_ERR_ADDRESS_IN_USE');
      }
    }
  }

  /** The proxy's address: give it to the primary as its peer. */
  get address(): { host: string; port: number } {
    const a = this.#server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** True while the link is cut. */
  get isCut(): boolean {
    return this.#cut;
  }

  /** Relayed TCP connections open now. */
  get connections(): number {
    return this.#sockets.size / 2;
  }

  /** Counters: connections accepted and relayed, refused while cut; TCP bytes relayed each way. */
  get stats(): { accepted: number; refused: number; bytesToTarget: number; bytesFromTarget: number } {
    return { accepted: this.#accepted, refused: this.#refused, bytesToTarget: this.#bytesToTarget, bytesFromTarget: this.#bytesFromTarget };
  }

  /** Cuts the link: destroys every relayed connection, refuses new ones, drops datagrams. */
  cut(): void {
    this.#cut = true;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    log('cut');
  }

  /** Heals the link: new connections and datagrams are relayed again. */
  heal(): void {
    this.#cut = false;
    log('healed');
  }

  #accept(client: net.Socket): void {
    if (this.#cut) {
      this.#refused++;
      client.destroy();
      return;
    }
    this.#accepted++;
    const upstream = net.connect({ host: this.#target.host, port: this.#target.port });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const pair = [client, upstream];
    const end = (): void => {
      for (const s of pair) {
        s.destroy();
        this.#sockets.delete(s);
      }
    };
    for (const s of pair) {
      this.#sockets.add(s);
      s.on('error', end);
      s.on('close', end);
    }
    client.on('data', (chunk: Buffer) => {
      this.#bytesToTarget += chunk.length;
    });
    upstream.on('data', (chunk: Buffer) => {
      this.#bytesFromTarget += chunk.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
  }

  #datagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (this.#cut || this.#udp === undefined) return;
    const key = `${rinfo.address}:${rinfo.port}`;
    let up = this.#udpPeers.get(key);
    if (up === undefined) {
      const sock = dgram.createSocket(rinfo.family === 'IPv6' ? 'udp6' : 'udp4');
      sock.on('error', (err) => log('udp relay error: %s', err.message));
      sock.on('message', (reply) => {
        if (!this.#cut) this.#udp?.send(reply, rinfo.port, rinfo.address);
      });
      this.#udpPeers.set(key, sock);
      up = sock;
    }
    up.send(msg, this.#target.port, this.#target.host);
  }

  /** Closes everything. */
  async close(): Promise<void> {
    this.cut();
    for (const s of this.#udpPeers.values()) s.close();
    this.#udpPeers.clear();
    this.#udp?.close();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

function listenTcp(server: net.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new BlockMirrorError(toBlockMirrorError(err).code, `proxy cannot listen: ${err.message}`, { cause: err })));
    server.listen({ host, port }, () => resolve());
  });
}

function bindUdp(socket: dgram.Socket, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address: host, port, exclusive: true }, () => {
      socket.off('error', reject);
      socket.on('error', (err) => log('udp error: %s', err.message));
      resolve();
    });
  });
}
