/**
 * The contract every routing policy implements. A policy picks one worker from the routable
 * candidates of a model, reading only in-memory state (the Replica's views): it never awaits I/O
 * and never throws for ordinary input. Returning `undefined` means "no worker" (the caller answers
 * 503 `no_available_workers`).
 */
import type { PromptHashes } from '../state/block-hash.js';
import type { CacheIndex } from '../state/cache-index.js';
import type { LoadView } from '../state/load-view.js';
import type { WorkerView } from '../state/registry.js';

export const POLICY_NAMES = [
  'random',
  'round_robin',
  'passthrough',
  'cache_aware',
  'power_of_two',
  'least_load',
  'prefix_hash',
  'consistent_hashing',
  'manual',
  'bucket',
] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

export type HeaderValue = string | string[] | undefined;

export interface RouteRequest {
  /** resolved model id ('' when the request names none) */
  readonly model: string;
  /** routing text (SMG's extract_text_for_routing); '' when the policy does not need it */
  readonly text: string;
  /** lower-cased request headers */
  readonly headers: Readonly<Record<string, HeaderValue>>;
  /** token ids when known (gRPC mode later); HTTP mode leaves this undefined */
  readonly tokens?: readonly number[];
}

/** What a policy may read and emit. One instance per Router, shared by all policies. */
export interface RoutingContext {
  readonly load: LoadView;
  readonly cache: CacheIndex;
  /** characters per prefix-index block in HTTP mode */
  readonly blockChars: number;
  /** records that `workerId` now holds the prompt's blocks from `fromDepth` on (emits a cache event) */
  recordCache(model: string, workerId: string, hashes: readonly number[], fromDepth: number): void;
  /**
   * Optional: as `recordCache`, for a prompt hashed on demand whose tail the decision did not
   * need. A context that queues the delta (a CacheRecorder) hashes the rest after the decision;
   * without this method, policies complete the hashes themselves and call `recordCache`.
   */
  recordCacheDeferred?(model: string, workerId: string, hashes: PromptHashes, fromDepth: number): void;
  /** uniform random in [0, 1); injectable for deterministic tests */
  random(): number;
  /** wall clock ms; injectable */
  now(): number;
  /** counts a policy-specific branch (`smg_<policy>_policy_branch_total{branch}`) */
  branch(policy: 'manual' | 'consistent_hashing' | 'prefix_hash', branch: string): void;
}

export interface RoutingPolicy {
  readonly name: PolicyName;
  /** whether `RouteRequest.text` must be extracted for this policy */
  readonly needsText: boolean;
  select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined;
  /** the set of workers of this policy's model changed (rebuild rings, prune maps) */
  onWorkersChanged?(workers: readonly WorkerView[]): void;
  /** periodic maintenance (eviction); called every `--eviction-interval` seconds */
  maintain?(): void;
}

/** The tuning knobs of SMG's `--policy` family of flags (inventory §1.2), already validated. */
export interface PolicyParams {
  cacheThreshold: number;
  balanceAbsThreshold: number;
  balanceRelThreshold: number;
  balanceTokenUsageThreshold: number;
  overloadTokenUsageThreshold: number;
  evictionIntervalSecs: number;
  maxTreeSize: number;
  blockSize: number;
  maxIdleSecs: number;
  assignmentMode: 'random' | 'min_load' | 'min_group';
  prefixTokenCount: number;
  prefixHashLoadFactor: number;
  leastLoadKvPressureWeight: number;
  leastLoadDefaultThroughput: number;
  leastLoadMeanPrefillTokens: number;
}

export type PolicyFactory = (params: PolicyParams, ctx: RoutingContext) => RoutingPolicy;
