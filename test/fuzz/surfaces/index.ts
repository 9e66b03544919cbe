/**
 * Every fuzz surface of the campaign, in report order.
 */
import type { Surface } from '../surface.js';
import { cliSurface } from './cli.js';
import { cycleSurface } from './cycle.js';
import { filesSurface } from './files.js';
import { handshakeSurface } from './handshake.js';
import { heartbeatSurface } from './heartbeat.js';
import { nbdSurface } from './nbd.js';
import { replicationFramesSurface } from './replication-frames.js';

export const SURFACES: readonly Surface<never>[] = [
  handshakeSurface,
  replicationFramesSurface,
  heartbeatSurface,
  cycleSurface,
  nbdSurface,
  filesSurface,
  cliSurface,
] as unknown as readonly Surface<never>[];
