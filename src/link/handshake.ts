/**
 * The per-connection handshake.
 *
 * ```
 * client                                   server
 *   HELLO {protocol range, node, session,
 *          slot, slots, features, nonceC,
 *          [hb port, hbi, hbs]}             →
 *                                          ← CHALLENGE {protocol, node, features, nonceS,
 *                                                       proofS = HMAC(secret, "bm-server", nonceC, nonceS)}
 *   (client checks proofS when it has a secret)
 *   AUTH {proofC = HMAC(secret, "bm-client",
 *         nonceS, nonceC), volumes}        →
 *                                          (server checks proofC, the heartbeat
 *                                           settings, then the volumes)
 *                                          ← READY {volumes: [{name, applied}], [hbi, hbs]}   or ERROR {code}
 *   (client checks that hbi/hbs are its own)
 * ```
 * Volume names travel only after the server proved itself to the client, and
 * the server answers about them only after the client proved itself. A client
 * that sends heartbeats announces its interval and stale time (`hbi`, `hbs`);
 * the server adopts them for this client and confirms them in READY, or
 * refuses with `BM_ERR_SETTINGS_MISMATCH` before deciding about any volume
 * (see `heartbeat-settings.ts`).
 *
 * @module
 */
import { BlockMirrorError, isErrorCode } from '../errors.js';
import type { Clock } from '../clock.js';
import { MessageType, type Frame } from '../codec/frame.js';
import {
  PROTOCOL_MAX,
  PROTOCOL_MIN,
  parseAuth,
  parseChallenge,
  parseError,
  parseHello,
  parseReady,
  type AuthHeader,
  type HelloHeader,
  type ReadyHeader,
  type ReadyVolume,
  type VolumeOffer,
} from '../codec/messages.js';
import { computeProof, createNonce, verifyProof } from './auth.js';
import { checkAgreedHeartbeats, type HeartbeatSettings } from './heartbeat-settings.js';
import type { FramedConnection } from './framed-connection.js';

/** Features this build announces. */
export const FEATURES: readonly string[] = ['barrier-v1'];

/** Waits for the next frame, failing on close, timeout or a peer ERROR. */
function nextFrame(conn: FramedConnection, clock: Clock, deadline: number): Promise<Frame> {
  return new Promise<Frame>((resolve, reject) => {
    const cleanup = (): void => {
      conn.off('frame', onFrame);
      conn.off('close', onClose);
      clock.clearTimeout(timer);
    };
    const onFrame = (frame: Frame): void => {
      cleanup();
      if (frame.type === MessageType.ERROR) {
        let err: BlockMirrorError;
        try {
          const e = parseError(frame.header);
          err = new BlockMirrorError(isErrorCode(e.code) ? e.code : 'BM_ERR_PROTOCOL', `peer refused: ${e.message}`, {
            details: e.volume === undefined ? { peerCode: e.code } : { peerCode: e.code, volume: e.volume },
          });
        } catch (error) {
          err = error as BlockMirrorError;
        }
        conn.destroy(err);
        reject(err);
        return;
      }
      resolve(frame);
    };
    const onClose = (error?: BlockMirrorError): void => {
      cleanup();
      reject(error ?? new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'connection closed during the handshake'));
    };
    const timer = clock.setTimeout(
      () => {
        cleanup();
        const err = new BlockMirrorError('BM_ERR_HANDSHAKE_TIMEOUT', 'handshake timed out');
        conn.fail(err);
        reject(err);
      },
      Math.max(0, deadline - clock.now()),
    );
    conn.on('frame', onFrame);
    conn.once('close', onClose);
  });
}

function expect(conn: FramedConnection, frame: Frame, type: number): void {
  if (frame.type !== type) {
    const err = new BlockMirrorError('BM_ERR_PROTOCOL', `expected message ${type} during the handshake, got ${frame.type}`);
    conn.fail(err);
    throw err;
  }
}

/** Runs `parse` on a header; on failure, closes the connection with the error. */
function parsed<T>(conn: FramedConnection, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    conn.fail(error as BlockMirrorError);
    throw error;
  }
}

/** Options of the client side of the handshake. */
export interface ClientHandshakeOptions {
  nodeId: string;
  session: string;
  slot: number;
  slots: number;
  secret?: Uint8Array | undefined;
  volumes: VolumeOffer[];
  timeout: number;
  clock: Clock;
  /** UDP port of the client's heartbeat socket, if it sends heartbeats. */
  heartbeatPort?: number | undefined;
  /**
   * With `heartbeatPort`: the client's heartbeat interval and stale time,
   * announced in HELLO; the server must confirm them in READY (else the
   * handshake fails with `BM_ERR_SETTINGS_MISMATCH`).
   */
  heartbeats?: HeartbeatSettings | undefined;
  /** Features to announce (default {@link FEATURES}: a per-write mirroring primary). */
  features?: readonly string[];
}

/** What the client learns from a successful handshake. */
export interface ClientHandshakeResult {
  peerNode: string;
  protocol: number;
  features: string[];
  volumes: ReadyVolume[];
  /** The heartbeat settings the server confirmed (absent without heartbeats). */
  heartbeats?: HeartbeatSettings;
}

/** Client side (the primary). Rejects with a coded error and closes the connection on failure. */
export async function clientHandshake(conn: FramedConnection, o: ClientHandshakeOptions): Promise<ClientHandshakeResult> {
  const deadline = o.clock.now() + o.timeout;
  const nonceC = createNonce();
  const features = o.features ?? FEATURES;
  const hello: HelloHeader = {
    protocol: [PROTOCOL_MIN, PROTOCOL_MAX],
    node: o.nodeId,
    session: o.session,
    slot: o.slot,
    slots: o.slots,
    features: [...features],
    nonce: nonceC,
  };
  const heartbeats = o.heartbeatPort === undefined ? undefined : o.heartbeats;
  if (o.heartbeatPort !== undefined) hello.hb = o.heartbeatPort;
  if (heartbeats !== undefined) {
    hello.hbi = heartbeats.interval;
    hello.hbs = heartbeats.staleAfter;
  }
  const framePromise = nextFrame(conn, o.clock, deadline);
  conn.send(MessageType.HELLO, hello);
  const cf = await framePromise;
  expect(conn, cf, MessageType.CHALLENGE);
  const challenge = parsed(conn, () => parseChallenge(cf.header));
  if (challenge.protocol < PROTOCOL_MIN || challenge.protocol > PROTOCOL_MAX) {
    const err = new BlockMirrorError('BM_ERR_PROTOCOL_VERSION', `peer chose protocol ${challenge.protocol}`);
    conn.fail(err);
    throw err;
  }
  if (o.secret !== undefined && !verifyProof(o.secret, 'server', nonceC, challenge.nonce, challenge.proof)) {
    const err = new BlockMirrorError('BM_ERR_AUTH_FAILED', 'the peer could not prove knowledge of the shared secret');
    conn.fail(err);
    throw err;
  }
  const auth: AuthHeader = { volumes: o.volumes };
  if (o.secret !== undefined) auth.proof = computeProof(o.secret, 'client', challenge.nonce, nonceC);
  const readyPromise = nextFrame(conn, o.clock, deadline);
  conn.send(MessageType.AUTH, auth);
  const rf = await readyPromise;
  expect(conn, rf, MessageType.READY);
  const ready = parsed(conn, () => parseReady(rf.header));
  const result: ClientHandshakeResult = {
    peerNode: challenge.node,
    protocol: challenge.protocol,
    features: challenge.features.filter((f) => features.includes(f)),
    volumes: ready.volumes,
  };
  if (heartbeats !== undefined) {
    const answered = ready.hbi === undefined || ready.hbs === undefined ? undefined : { interval: ready.hbi, staleAfter: ready.hbs };
    parsed(conn, () => checkAgreedHeartbeats(heartbeats, answered));
    result.heartbeats = { ...heartbeats };
  }
  return result;
}

/** Options of the server side of the handshake. */
export interface ServerHandshakeOptions {
  nodeId: string;
  secret?: Uint8Array | undefined;
  timeout: number;
  clock: Clock;
  /** Features this server supports (default {@link FEATURES}). */
  features?: readonly string[];
  /** Sees the HELLO as soon as it is parsed (before authentication: its node id is only a claim then). */
  onHello?(hello: HelloHeader): void;
  /**
   * Decides about the heartbeat settings of an authenticated client that sends
   * heartbeats (`hello.hb` set), before `accept`: returns the settings to use
   * towards it (confirmed in READY) or throws `BM_ERR_SETTINGS_MISMATCH`.
   * Not called for a client without heartbeats.
   */
  heartbeats?(hello: HelloHeader): HeartbeatSettings;
  /**
   * Decides about the offered volumes of an authenticated client; returns the
   * READY answer or throws a coded error (unknown volume, mismatch, busy).
   */
  accept(hello: HelloHeader, volumes: VolumeOffer[]): ReadyVolume[] | Promise<ReadyVolume[]>;
}

/** What the server learns from a successful handshake. */
export interface ServerHandshakeResult {
  hello: HelloHeader;
  protocol: number;
  features: string[];
  volumes: VolumeOffer[];
  /** The heartbeat settings agreed with the client (absent: it sends no heartbeats). */
  heartbeats?: HeartbeatSettings;
}

/** Server side (the mirror target). Rejects with a coded error and closes the connection on failure. */
export async function serverHandshake(conn: FramedConnection, o: ServerHandshakeOptions): Promise<ServerHandshakeResult> {
  const deadline = o.clock.now() + o.timeout;
  const hf = await nextFrame(conn, o.clock, deadline);
  expect(conn, hf, MessageType.HELLO);
  const hello = parsed(conn, () => parseHello(hf.header));
  o.onHello?.(hello);
  const protocol = Math.min(PROTOCOL_MAX, hello.protocol[1]);
  if (protocol < Math.max(PROTOCOL_MIN, hello.protocol[0])) {
    const err = new BlockMirrorError('BM_ERR_PROTOCOL_VERSION', `no common protocol version with ${hello.protocol.join('..')}`);
    conn.fail(err);
    throw err;
  }
  const nonceS = createNonce();
  const features = o.features ?? FEATURES;
  const challenge: Record<string, unknown> = { protocol, node: o.nodeId, features: [...features], nonce: nonceS };
  if (o.secret !== undefined) challenge.proof = computeProof(o.secret, 'server', hello.nonce, nonceS);
  const authPromise = nextFrame(conn, o.clock, deadline);
  conn.send(MessageType.CHALLENGE, challenge);
  const af = await authPromise;
  expect(conn, af, MessageType.AUTH);
  const auth = parsed(conn, () => parseAuth(af.header));
  if (o.secret !== undefined && !verifyProof(o.secret, 'client', nonceS, hello.nonce, auth.proof)) {
    const err = new BlockMirrorError('BM_ERR_AUTH_FAILED', 'the peer could not prove knowledge of the shared secret');
    conn.fail(err);
    throw err;
  }
  let volumes: ReadyVolume[];
  let heartbeats: HeartbeatSettings | undefined;
  try {
    // settings first: a refused client claims nothing
    if (hello.hb !== undefined && o.heartbeats !== undefined) heartbeats = o.heartbeats(hello);
    volumes = await o.accept(hello, auth.volumes);
  } catch (error) {
    conn.fail(error as BlockMirrorError);
    throw error;
  }
  const ready: ReadyHeader = { volumes };
  if (heartbeats !== undefined) {
    ready.hbi = heartbeats.interval;
    ready.hbs = heartbeats.staleAfter;
  }
  conn.send(MessageType.READY, ready);
  const result: ServerHandshakeResult = { hello, protocol, features: hello.features.filter((f) => features.includes(f)), volumes: auth.volumes };
  if (heartbeats !== undefined) result.heartbeats = heartbeats;
  return result;
}
