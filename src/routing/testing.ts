/**
 * Test helpers for routing: worker views and a deterministic RoutingContext over a real LoadView
 * and CacheIndex. `recordCache` builds the same `cache.blocks` event the gateway applies through
 * the Replica, so tests exercise the real index.
 */
import { blockArray, type BlockList } from '../state/block-hash.js';
import { CacheIndex } from '../state/cache-index.js';
import type { CacheBlocksEvent } from '../state/events.js';
import { packHlc } from '../state/hlc.js';
import { LoadView } from '../state/load-view.js';
import type { WorkerView } from '../state/registry.js';
import type { EngineLoad, WorkerSpec, WorkerStatus } from '../state/worker.js';
import { seededRandom } from '../testing/prng.js';
import type { PolicyParams, RouteRequest, RoutingContext } from './types.js';

export { seededRandom };

export interface MakeWorkerOptions {
  models?: string[];
  labels?: Record<string, string>;
  status?: WorkerStatus;
  priority?: number;
  cost?: number;
}

export function makeWorker(id: string, url: string, opts: MakeWorkerOptions = {}): WorkerView {
  const status = opts.status ?? 'ready';
  const spec: WorkerSpec = {
    url,
    models: opts.models ?? [],
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels: opts.labels ?? {},
    priority: opts.priority ?? 50,
    cost: opts.cost ?? 1,
    health: {},
    max_connection_attempts: 3,
  };
  return {
    id,
    url,
    spec,
    models: spec.models,
    status,
    routable: status === 'ready',
    version: { wall: 0, counter: 0, node: 'test' },
  };
}

/** `count` workers `w0…` at `http://w0:8000…` */
export function makeWorkers(count: number, opts: MakeWorkerOptions = {}): WorkerView[] {
  return Array.from({ length: count }, (_, i) => makeWorker(`w${i}`, `http://w${i}:8000`, opts));
}

export interface MakeContextOptions {
  seed?: number;
  blockChars?: number;
  /** start of the injectable clock, ms */
  startMs?: number;
  /** CacheIndex budget per model and worker, in blocks */
  maxBlocksPerWorker?: number;
}

export interface TestContext extends RoutingContext {
  readonly load: LoadView;
  readonly cache: CacheIndex;
  /** `${policy}:${branch}` → count */
  readonly branches: Map<string, number>;
  /** every cache event applied, in order */
  readonly cacheEvents: CacheBlocksEvent[];
  /** moves the clock forward */
  advance(ms: number): void;
  /** sets an engine report for a worker (a new object, as a fresh poll would be) */
  setEngineLoad(workerId: string, load: Partial<EngineLoad>): void;
  branchCount(policy: string, branch: string): number;
}

export function makeContext(opts: MakeContextOptions = {}): TestContext {
  const random = seededRandom(opts.seed ?? 1);
  let nowMs = opts.startMs ?? 1_700_000_000_000;
  let counter = 0;
  let lastWall = -1;
  let engineSeq = 0;
  const load = new LoadView('test-node');
  const cache = new CacheIndex(opts.maxBlocksPerWorker);
  const branches = new Map<string, number>();
  const cacheEvents: CacheBlocksEvent[] = [];
  /** applies the delta at once (the gateway queues it: CacheRecorder) */
  const record = (model: string, workerId: string, blocks: BlockList, fromDepth: number): void => {
    const hashes = blockArray(blocks);
    if (nowMs === lastWall) counter = Math.min(counter + 1, 1023);
    else {
      lastWall = nowMs;
      counter = 0;
    }
    const ev: CacheBlocksEvent = {
      kind: 'cache.blocks',
      model,
      worker: workerId,
      anchor: fromDepth > 0 ? hashes[fromDepth - 1] : 0,
      hashes: hashes.slice(fromDepth),
      seen: packHlc({ wall: nowMs, counter, node: 'test-node' }),
    };
    cacheEvents.push(ev);
    cache.apply(ev);
  };
  return {
    load,
    cache,
    blockChars: opts.blockChars ?? 64,
    branches,
    cacheEvents,
    recordCache: record,
    recordCacheDeferred: record,
    random,
    now: () => nowMs,
    branch(policy: string, branch: string): void {
      const k = `${policy}:${branch}`;
      branches.set(k, (branches.get(k) ?? 0) + 1);
    },
    advance(ms: number): void {
      nowMs += ms;
    },
    setEngineLoad(workerId: string, partial: Partial<EngineLoad>): void {
      load.applyEngineLoad({
        kind: 'worker.engine_load',
        id: workerId,
        load: {
          tokenUsage: 0,
          numRunningReqs: 0,
          numWaitingReqs: 0,
          numWaitingUncachedTokens: 0,
          genThroughput: 0,
          numUsedTokens: -1,
          ...partial,
        },
        hlc: { wall: nowMs, counter: ++engineSeq, node: 'test-node' },
      });
    },
    branchCount(policy: string, branch: string): number {
      return branches.get(`${policy}:${branch}`) ?? 0;
    },
  };
}

/** SMG's CLI defaults for the policy flags (inventory §1.2) */
export const DEFAULT_TEST_PARAMS: Readonly<PolicyParams> = {
  cacheThreshold: 0.3,
  balanceAbsThreshold: 64,
  balanceRelThreshold: 1.5,
  balanceTokenUsageThreshold: 1.0,
  overloadTokenUsageThreshold: 1.0,
  evictionIntervalSecs: 120,
  maxTreeSize: 67108864,
  blockSize: 16,
  maxIdleSecs: 14400,
  assignmentMode: 'random',
  prefixTokenCount: 256,
  prefixHashLoadFactor: 1.25,
  leastLoadKvPressureWeight: 0.15,
  leastLoadDefaultThroughput: 2000,
  leastLoadMeanPrefillTokens: 1024,
};

export function testParams(overrides: Partial<PolicyParams> = {}): PolicyParams {
  return { ...DEFAULT_TEST_PARAMS, ...overrides };
}

/** a request with optional text / headers / tokens */
export function makeRequest(opts: Partial<RouteRequest> = {}): RouteRequest {
  return {
    model: opts.model ?? 'm',
    text: opts.text ?? '',
    headers: opts.headers ?? {},
    tokens: opts.tokens,
  };
}
