/**
 * blockmirror: mirror block volumes between storage servers over IP.
 *
 * Start with {@link createMirrorTarget} on the mirror server and
 * {@link createPrimary} on the primary; serve volumes to any NBD client with
 * {@link NbdServer}.
 *
 * @module blockmirror
 */

// errors and time
export { BlockMirrorError, ERROR_CODES, isBlockMirrorError, isErrorCode, toBlockMirrorError } from './errors.js';
export type { ErrorCode, BlockMirrorErrorOptions } from './errors.js';
export { systemClock, activeClock, clockFrom, wallClockIso } from './clock.js';
export type { Clock, TimerHandle } from './clock.js';

// block devices
export type { BlockDevice, BlockDeviceSupports, BlockExtent, WriteOptions } from './device/block-device.js';
export { FileBlockDevice } from './device/file-device.js';
export type { FileBlockDeviceOptions } from './device/file-device.js';
export { MemoryBlockDevice } from './device/memory-device.js';
export type { MemoryBlockDeviceOptions } from './device/memory-device.js';
export { checkRange, validateGeometry, checkWriteData, MAX_BLOCK_SIZE } from './device/range.js';
export type { DeviceGeometry } from './device/range.js';
export { parseSize } from './device/size.js';
export { AllocationMap, ALLOCATION_REGION_SIZE } from './device/allocation-map.js';
export { AllocationStore, openAllocationStore, ALLOCATION_HEADER_SIZE } from './device/allocation-store.js';
export type { AllocationStoreOptions, AllocationMapOrigin } from './device/allocation-store.js';
export { AllocationTrackingDevice } from './device/allocation-tracking-device.js';
export type { AllocationTrackingOptions, ZeroScanProgress } from './device/allocation-tracking-device.js';

// transports
export type {
  Transport,
  TransportAddress,
  TransportConnection,
  TransportConnectionEvents,
  TransportServer,
  TransportServerEvents,
  TransportSupports,
  ConnectOptions,
  DatagramChannel,
  DatagramChannelEvents,
} from './transport/transport.js';
export { TcpTransport, TcpConnection, TcpServer, UdpChannel, DEFAULT_TCP_HIGH_WATER_MARK, DEFAULT_TCP_CONNECT_TIMEOUT } from './transport/tcp.js';
export type { TcpTransportOptions, SocketSettings } from './transport/tcp.js';
export { TlsTransport, TlsServer } from './transport/tls.js';
export type { TlsTransportOptions, TlsServerStats, Pem } from './transport/tls.js';
export { parsePeerPatterns, peerAllowed, certificateNames } from './transport/peer-identity.js';
export type { PeerPattern } from './transport/peer-identity.js';
export { isLoopbackHost } from './transport/loopback.js';

// wire codec
export { encodeFrame, frameLength, validateCodecLimits } from './codec/encoder.js';
export type { EncodeFrameOptions } from './codec/encoder.js';
export { FrameDecoder, decodeFrame } from './codec/decoder.js';
export type { FrameDecoderOptions, DecodeFrameOptions } from './codec/decoder.js';
export { MAGIC, WIRE_VERSION, PREFIX_LENGTH, MessageType, FrameFlag, DEFAULT_CODEC_LIMITS } from './codec/frame.js';
export type { Frame, CodecLimits, MessageTypeValue } from './codec/frame.js';
export { PROTOCOL_MIN, PROTOCOL_MAX, MAX_FAILBACK_RANGES } from './codec/messages.js';
export type { VolumeOffer, HelloHeader, ReadyVolume } from './codec/messages.js';

// replication
export { createPrimary, Primary, DEFAULT_MAX_BUFFERED } from './replication/primary.js';
export type { PrimaryOptions, PrimaryVolumeConfig, PrimaryStatus, PrimaryEvents, LinkState } from './replication/primary.js';
export { PrimaryVolume } from './replication/primary-volume.js';
export type {
  ReplicationMode,
  VolumeState,
  WriteResult,
  PrimaryVolumeStatus,
  PrimaryVolumeEvents,
  VolumeWriteOptions,
  InitialSyncMethod,
  FailbackInfo,
} from './replication/primary-volume.js';
export { createMirrorTarget, MirrorTarget, TargetVolume } from './replication/mirror-target.js';
export type {
  MirrorTargetOptions,
  TargetVolumeConfig,
  TargetVolumeStatus,
  MirrorTargetStatus,
  MirrorTargetPeerStatus,
  MirrorTargetEvents,
  RefusedPeerInfo,
} from './replication/mirror-target.js';
export { persistentNodeId, NODE_ID_FILE } from './storage/node-id.js';
export type { ConnectionSlotStatus, SlotStatus } from './link/connection-array.js';

// NBD front
export { NbdServer } from './nbd/server.js';
export type { NbdServerOptions, NbdExportLookup, NbdListenAddress, NbdClientInfo, NbdServerEvents, NbdServerStats } from './nbd/server.js';
export type { NbdTlsOptions } from './nbd/tls-options.js';
export { nbdErrorFor, validateNbdExport } from './nbd/export.js';
export { NbdBlockDevice } from './nbd/nbd-block-device.js';
export type { NbdBlockDeviceOptions, NbdBlockDeviceEvents, NbdZeroOptions } from './nbd/nbd-block-device.js';
export { parseNbdUri, formatNbdUri, isNbdUri, NBD_DEFAULT_PORT } from './nbd/uri.js';
export type { NbdTarget } from './nbd/uri.js';
export type { NbdExport, NbdBackend, NbdWriteZeroesOptions } from './nbd/export.js';

// journal
export type {
  Journal,
  JournalEntry,
  JournalEntryBase,
  JournalStats,
  JournalWriteEntry,
  JournalZeroEntry,
  PendingJournalEntry,
  PendingWriteEntry,
  PendingZeroEntry,
} from './journal/journal.js';
export { MemoryJournal, MEMORY_RECORD_OVERHEAD } from './journal/memory-journal.js';
export type { MemoryJournalOptions } from './journal/memory-journal.js';
export { FileJournal, DEFAULT_JOURNAL_CAPACITY } from './journal/file-journal.js';
export type { FileJournalOptions, FileJournalStats, FileJournalHooks, JournalFsyncPolicy } from './journal/file-journal.js';

// link health
export { LinkMonitor, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_STALE_AFTER, DEFAULT_PROBATION } from './link/link-monitor.js';
export type {
  LinkMonitorOptions,
  LinkMonitorEvents,
  LinkMonitorStatus,
  LinkState as LinkMonitorState,
  LinkTransitionReason,
  HeartbeatRejections,
  HeartbeatAuth,
} from './link/link-monitor.js';
export { IdleWatch, DEFAULT_IDLE_TIMEOUT } from './link/idle-watch.js';
export type { IdleWatchOptions } from './link/idle-watch.js';
export { ConnectionArray } from './link/connection-array.js';
export type { ConnectionSlot } from './link/connection-array.js';
export { encodeHeartbeat, verifyHeartbeat, parseHeartbeat, HeartbeatReplayGuard } from './link/heartbeat.js';
export { agreeHeartbeats, checkAgreedHeartbeats, describeHeartbeats } from './link/heartbeat-settings.js';
export type { HeartbeatSettings } from './link/heartbeat-settings.js';
export type { Heartbeat, HeartbeatFields, HeartbeatStatus, HeartbeatRejectReason, VerifyHeartbeatOptions, HeartbeatCursor, HeartbeatReplayGuardOptions } from './link/heartbeat.js';

// NBD exports of volumes, admin endpoint
export { cycleVolumeBackend, primaryVolumeBackend, targetVolumeBackend } from './nbd/volume-backend.js';
export type { PrimaryVolumeBackendOptions, VolumeOpInfo, VolumeOpObserver } from './nbd/volume-backend.js';
export { createAdminServer, AdminServer } from './admin/server.js';
export type { AdminActions, AdminServerOptions, StatusSource } from './admin/server.js';
export { LatencyHistogram, DEFAULT_LATENCY_BUCKETS } from './admin/histogram.js';
export type { HistogramSnapshot, HistogramBucket } from './admin/histogram.js';
export { renderMetrics, escapeLabelValue, formatValue, PROMETHEUS_CONTENT_TYPE } from './admin/metrics.js';
export type { AdminMetrics } from './admin/metrics.js';
export { normalizeStatus } from './admin/status.js';
export type { AdminStatus, AdminPeerStatus, AdminVolumeStatus } from './admin/status.js';
export { FramedConnection } from './link/framed-connection.js';
export type { FramedConnectionEvents, FramedConnectionOptions } from './link/framed-connection.js';

// resync, verify, generations
export { MemoryDirtyBitmap, DEFAULT_REGION_SIZE, MIN_REGION_SIZE, MAX_REGION_SIZE, MAX_REGION_COUNT, BITMAP_PAGE_BYTES, resolveBitmapGeometry } from './resync/dirty-bitmap.js';
export type { DirtyBitmap, BitmapRegion, DirtyBitmapGeometry, ResolvedBitmapGeometry } from './resync/dirty-bitmap.js';
export { FileDirtyBitmap, readBitmapRanges, dirtyRanges } from './resync/file-dirty-bitmap.js';
export type { FileDirtyBitmapOptions, FileDirtyBitmapStats, FileDirtyBitmapHooks, BitmapFlushPolicy, BitmapRangesResult } from './resync/file-dirty-bitmap.js';
export { hashRegion, hashRegions, compareDigests, digestLength, DEFAULT_REGION_HASH, MAX_HASH_CHUNK, DEFAULT_HASH_CONCURRENCY } from './resync/region-hash.js';
export type { RegionHashAlgorithm, RegionRange, RegionHashOptions, HashRegionsOptions } from './resync/region-hash.js';
export { RateLimiter } from './resync/rate-limiter.js';
export type { RateLimiterOptions, RateLimiterTakeOptions } from './resync/rate-limiter.js';
export { ProgressTracker } from './resync/progress.js';
export type { ProgressSnapshot, ProgressTrackerEvents, ProgressTrackerOptions } from './resync/progress.js';
export type { ResyncOptions, ResyncResult, VerifyResult } from './replication/resync-runner.js';
export {
  compareGenerations,
  advanceGeneration,
  freshGeneration,
  newGenerationId,
  isGenerationId,
  MAX_HISTORY,
} from './replication/generation.js';
export type { GenerationState, Lineage } from './replication/generation.js';
export { MemoryPairStateStore, FilePairStateStore, DISK_STATES, isDiskState, checkPairState } from './replication/pair-state.js';
export type { DiskState, PairRole, PairState, PairStateStore, Resolution, BitmapOwner } from './replication/pair-state.js';
export type { SplitBrainPolicy } from './replication/mirror-target.js';
export { MemoryApplyStateStore, FileApplyStateStore } from './replication/apply-state.js';
export type { ApplyState, ApplyStateStore } from './replication/apply-state.js';
export { FileStreamStore, MemoryStreamStore, SEQ_RESERVATION } from './replication/stream-file.js';
export type { StreamState, StreamStore } from './replication/stream-file.js';

// files of the cycle code (injectable: a simulation runs it on files in memory)
export { nodeFileSystem } from './storage/file-system.js';
export type { FileSystem, StoredFile, OpenDeviceOptions } from './storage/file-system.js';
// freeze/copy cycles (cycle source; received by a MirrorTarget with `cycle`, or a standalone CycleTarget)
export { LayeredVolume } from './cycle/layered-volume.js';
export type { LayeredVolumeOptions, LayeredVolumeStatus, LayerStatus, LayeredVolumeHooks } from './cycle/layered-volume.js';
export { FreezeTable } from './cycle/freeze-table.js';
export type { GranuleRun } from './cycle/freeze-table.js';
export { cycleGeometry, DEFAULT_CHUNK_SIZE, DEFAULT_GRANULARITY } from './cycle/geometry.js';
export type { CycleGeometry } from './cycle/geometry.js';
export { ConsistencyGroup } from './cycle/consistency-group.js';
export type { GroupMember, GroupFreeze, ConsistencyGroupOptions } from './cycle/consistency-group.js';
export { createCycleSource, CycleSource } from './cycle/cycle-runner.js';
export type {
  CycleSourceOptions,
  CycleSourceStatus,
  CycleSourceEvents,
  CycleTargetConfig,
  CycleTargetProgress,
  CycleResult,
  CycleTargetResult,
  CyclePhase,
} from './cycle/cycle-runner.js';
export { createCycleTarget, CycleTarget, CycleTargetVolume } from './cycle/cycle-target.js';
export { CycleHost, CYCLE_FEATURE } from './cycle/cycle-host.js';
export type { CycleHostOptions, CycleHostEvents, CycleVolumeStatus, CycleSourcePeer } from './cycle/cycle-host.js';
export type { CycleTargetOptions, CycleTargetStatus, CycleTargetVolumeStatus, CycleTargetEvents } from './cycle/cycle-target.js';

export type { TargetImageState, StagingStoreHooks } from './cycle/staging-store.js';

export type { CycleLinkState } from './cycle/cycle-link.js';
export type { TransferStats } from './cycle/transfer.js';
export type { CycleBeginHeader, CycleVolumePlan, CycleTableHeader, CycleDataHeader, CycleCommitHeader, CycleAckHeader } from './cycle/messages.js';
