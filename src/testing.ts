/**
 * Compliance suites and fault-injecting adapters, for testing blockmirror and
 * your own `BlockDevice` / `Transport` / `PairStateStore` implementations.
 *
 * ```ts
 * import { blockDeviceSuite } from 'blockmirror/testing';
 * blockDeviceSuite({ name: 'MyDevice', create: (size, blockSize) => MyDevice.create(size, blockSize), supports: { trim: true } });
 * ```
 *
 * @module blockmirror/testing
 */
export { blockDeviceSuite } from './testing/block-device-suite.js';
export type { BlockDeviceSuiteOptions } from './testing/block-device-suite.js';
export { transportSuite } from './testing/transport-suite.js';
export { pairStateSuite } from './testing/pair-state-suite.js';
export type { PairStateSuiteOptions } from './testing/pair-state-suite.js';
export type { TransportSuiteOptions, TransportSuiteContext } from './testing/transport-suite.js';
export { FaultyBlockDevice } from './device/faulty-device.js';
export type { FaultRule, FaultOp, InjectedError, InjectedFault, FaultyDeviceStats, FaultyBlockDeviceOptions } from './device/faulty-device.js';
export { MemoryNetwork, seededRandom, DEFAULT_MEMORY_HIGH_WATER_MARK, DEFAULT_REORDER_WINDOW_MS } from './transport/memory.js';
export type {
  MemoryLink,
  MemoryLinkDirection,
  MemoryLinkDirectionName,
  MemoryDelay,
  MemoryTransport,
  MemoryNetworkOptions,
  MemoryTransportOptions,
  MemoryNetworkEvents,
  DatagramFaults,
} from './transport/memory.js';
export { LinkProxy } from './cli/demo-proxy.js';
export type { LinkProxyOptions } from './cli/demo-proxy.js';
export { CrashableMemoryDevice, DeviceSession } from './device/crashable-memory-device.js';
export type { CrashableMemoryDeviceOptions, CrashableOp, CrashOptions, CrashReport } from './device/crashable-memory-device.js';
export * from './testing/simulator/index.js';
