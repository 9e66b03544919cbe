/**
 * Link faults on a {@link MemoryNetwork} that several tests share.
 */
import type { MemoryNetwork } from '../../src/transport/memory.js';

/**
 * Partitions two hosts and breaks every open link of the network at once, so
 * that both ends see `close` now (a bare partition leaves links half-open
 * until heartbeats notice).
 */
export function cutOff(network: MemoryNetwork, hostA: string, hostB: string): void {
  network.partition(hostA, hostB);
  for (const link of network.links) if (!link.closed) link.cut();
}
