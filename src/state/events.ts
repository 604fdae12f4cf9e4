/**
 * Every change to routing state is one of these events. Local observations (admin writes, probe
 * results, routing decisions) and, later, events received from peers go through the same
 * `Replica.apply`, whose merge rules make the order and duplication of events irrelevant.
 *
 * Events are plain JSON-serialisable data: the mesh will gossip them and the store will append
 * them as they are.
 */
import type { Hlc } from './hlc.js';
import type { EngineLoad, WorkerSpec, WorkerStatus } from './worker.js';

/** Registry: LWW register per worker id over (hlc); a removal is a tombstone that wins by hlc. */
export interface WorkerUpsertEvent {
  kind: 'worker.upsert';
  id: string;
  spec: WorkerSpec;
  hlc: Hlc;
}

export interface WorkerRemoveEvent {
  kind: 'worker.remove';
  id: string;
  hlc: Hlc;
}

/** Health: LWW register per worker id over the observations of its probers. */
export interface WorkerHealthEvent {
  kind: 'worker.health';
  id: string;
  status: WorkerStatus;
  hlc: Hlc;
}

/** Engine-reported load (polled `/v1/loads`): LWW register per worker id. */
export interface WorkerEngineLoadEvent {
  kind: 'worker.engine_load';
  id: string;
  load: EngineLoad;
  hlc: Hlc;
}

/**
 * A node's in-flight requests per worker. Soft state keyed by origin: the snapshot with the higher
 * `seq` wins, and it expires `ttlMs` after `at`. The local node's own numbers are read live from
 * its load guards, so its own snapshots only matter to peers.
 */
export interface LoadSnapshotEvent {
  kind: 'load.snapshot';
  origin: string;
  seq: number;
  at: number;
  ttlMs: number;
  inflight: Record<string, number>;
}

/**
 * Prefix-cache index delta: `worker` now holds the chained block hashes `hashes` of a prompt of
 * `model`, continuing the chain after `anchor` (the deepest block the worker already held, 0 when
 * none). Merge: per (hash, worker) keep the max `seen`; union otherwise.
 */
export interface CacheBlocksEvent {
  kind: 'cache.blocks';
  model: string;
  worker: string;
  anchor: number;
  hashes: number[];
  /** packed HLC (see packHlc): recency for LRU eviction */
  seen: number;
  /** depth of `hashes[0]` in its prompt (set by the routing node; peers receive checkpoints only) */
  from?: number;
}

/**
 * Rate-limit usage: the value of `origin`'s slot of the G-counter for (`key`, `window`), where
 * `window` is `floor(ms / windowMs)`. Slots only grow, so the merge keeps the per-field max; a slot
 * of a window older than the previous one is ignored (see src/state/rate-limit.ts).
 */
export interface RateLimitSlotsEvent {
  kind: 'ratelimit.slots';
  origin: string;
  key: string;
  window: number;
  windowMs: number;
  requests: number;
  tokens: number;
}

export type StateEvent =
  | WorkerUpsertEvent
  | WorkerRemoveEvent
  | WorkerHealthEvent
  | WorkerEngineLoadEvent
  | LoadSnapshotEvent
  | CacheBlocksEvent
  | RateLimitSlotsEvent;

export type StateEventKind = StateEvent['kind'];
