/**
 * The deterministic simulator: real replication code, virtual time, seeded
 * faults, invariant checks.
 *
 * @module
 */
export { Simulation, simulate, replayCommand } from './simulation.js';
export type { SimulationOptions, SimulationResult, Violation, InvariantId, SimFamily } from './simulation.js';
export { runCampaign, parseFaults } from './campaign.js';
export type { CampaignOptions, CampaignResult } from './campaign.js';
export { ALL_FAULTS, BIG_FAULTS, SPARSE_ABOVE, drawConfig, drawBigConfig, drawNbdConfig, describeConfig } from './config.js';
export type { FaultKind, SimConfig, SimVolumeConfig } from './config.js';
export { ScheduledActions, VirtualTime } from './virtual-time.js';
export type { Settled } from './virtual-time.js';
export { Rng } from './rng.js';
export { consistentCut, consistentCutSparse, prefixPoint, prefixPointSparse } from './prefix-check.js';
export type { CutResult, HistoryWrite, ObservedWrite, PrefixResult } from './prefix-check.js';
export { PrimaryNode, TargetNode, SIM_TIMERS, PRIMARY_HOST, TARGET_HOST, TARGET_PORT } from './nodes.js';
export type { StopKind, NodeContext, PrimaryVolumeDisk, TargetVolumeDisk } from './nodes.js';
export { JournalView, ProcessFences, PairStateStoreView, StoreView, TransportView, bitmapView, frozen } from './fences.js';
export type { Revocable } from './fences.js';
export { CycleSimulation, simulateCycle, drawCycleConfig, cycleReplayCommand, ALL_CYCLE_FAULTS } from './cycle-simulation.js';
export type { CycleSimConfig, CycleFaultKind, CycleSimulationOptions } from './cycle-simulation.js';
export { MemoryFileSystem, MemoryFileSystemView } from './memory-fs.js';
export type { MemoryFileSystemOptions } from './memory-fs.js';
export { SimNbdClient, duplexPair } from './nbd-client.js';
export type { NbdReply } from './nbd-client.js';
