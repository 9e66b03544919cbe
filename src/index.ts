/**
 * blockmirror: mirror block volumes between storage servers over IP.
 *
 * @module blockmirror
 */
export * from './errors.js';
export * from './clock.js';
export type * from './device/block-device.js';
export type * from './transport/transport.js';
