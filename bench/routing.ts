/**
 * Routing decision micro-benchmark (budget b): the cost of one `policy.select(workers, req)` per
 * policy at 8 / 64 / 512 workers, with a prefix index of ~1 M blocks.
 *
 * The RoutingContext is built the way src/server/gateway.ts builds it: over a real Replica (its
 * LoadView and CacheIndex), `recordCache` / `recordCacheDeferred` queueing the delta in a
 * CacheRecorder that applies it as a `cache.blocks` event through `replica.apply` after the
 * decision (the gateway: on the next setImmediate). The index is pre-filled with synthetic
 * multi-turn conversations (shared system prompts per group, each conversation placed on one
 * worker). Requests are realistic chat routing texts of 1–4 KB, flat strings joined as the
 * gateway's extractRoutingText joins messages: half extend an indexed conversation (cache_aware
 * hits), half are new. For cache_aware the decision time includes hashing the text (as far as the
 * index lookup needs it) and the lookup; the queued delta is applied right after each timed call,
 * outside it, and timed on its own (`recordUs`: the rest of the hashing and the index insertion),
 * so every later request sees it.
 *
 * Everything runs in-process; timing is per call with process.hrtime.bigint().
 */
import { runInNewContext } from 'node:vm';
import v8 from 'node:v8';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { parseLaunchArgs } from '../src/cli/config.js';
import { CacheRecorder } from '../src/routing/cache-recorder.js';
import { createPolicy } from '../src/routing/index.js';
import { makeWorker } from '../src/routing/testing.js';
import { POLICY_NAMES, type PolicyName, type PolicyParams, type RouteRequest } from '../src/routing/types.js';
import { blockHashes, type BlockList } from '../src/state/block-hash.js';
import { packHlc } from '../src/state/hlc.js';
import { Replica } from '../src/state/replica.js';
import type { WorkerView } from '../src/state/registry.js';
import type { RoutingContext } from '../src/routing/types.js';
import {
  cpuWindow,
  distribution,
  log,
  loadAvg,
  randomText,
  resultHeader,
  round,
  seededRandom,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
} from './common.js';

export const MODEL = 'm';
/** requests kept in flight per worker set while measuring (acquired after select, released later) */
const IN_FLIGHT = 32;
/** the p99 budget of one routing decision, µs */
export const BUDGET_P99_US = 20;
const LOAD_AWARE: ReadonlySet<PolicyName> = new Set<PolicyName>(['power_of_two', 'least_load']);

export interface RoutingBenchParams {
  workerCounts: number[];
  /** target number of distinct blocks in the prefix index */
  indexBlocks: number;
  /** measured calls per policy and worker count */
  calls: number;
  /** unmeasured calls before them */
  warmup: number;
  policies?: readonly PolicyName[];
  seed?: number;
  /** characters per index block; default: the gateway's `--prefix-block-chars` default */
  blockChars?: number;
  /** policy params; default: `parseLaunchArgs([]).policyParams` (SMG's CLI defaults) */
  policyParams?: PolicyParams;
  /** routing-text length range of requests, characters */
  textChars?: [number, number];
  /** progress messages */
  verbose?: boolean;
}

export interface PolicyTiming {
  policy: PolicyName;
  workers: number;
  calls: number;
  /** per-call time, µs */
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
  /** calls (warm-up included) that returned a worker / returned undefined */
  routed: number;
  unrouted: number;
  /** distinct workers chosen over the measured calls */
  distinctWorkers: number;
  /** max / mean picks per worker over the measured calls (1 = perfectly even) */
  maxOverMeanPicks: number;
  withinBudget: boolean;
  /** GC pauses during the policy's calls (warm-up included): count, total and longest, ms */
  gcPauses?: number;
  gcMs?: number;
  gcMaxMs?: number;
  /** cache_aware only: measured calls routed to a worker already holding part of the prompt */
  cacheHits?: number;
  /** cache_aware only: blocks recorded into the index during the measured calls */
  blocksRecorded?: number;
  /**
   * policies that record cache deltas (cache_aware): applying the queued delta of one measured
   * call to the index (`replica.apply`), µs — off the decision path, on the event loop all the same
   */
  recordUs?: { count: number; mean: number; p50: number; p90: number; p99: number; max: number };
}

export interface WorkerCountResult {
  workers: number;
  /** cache.size() after the pre-fill */
  indexBlocks: number;
  /** cache.size() after all policies ran (cache_aware records new prompts) */
  indexBlocksAfter: number;
  conversations: number;
  fillMs: number;
  /** V8 heap growth from the pre-fill, after a full GC (NaN if GC could not be forced) */
  indexHeapMiB: number;
  /** growth of ArrayBuffer memory (outside the V8 heap: the index's typed-array tables) from the pre-fill */
  indexExternalMiB: number;
  rssMiB: number;
  policies: PolicyTiming[];
  worstP99Us: number;
  worstPolicy: PolicyName;
  /** CPU use while this worker count ran: the machine's busy cores vs this process's */
  cpu: CpuWindow;
}

export interface RoutingCoreResult {
  params: {
    workerCounts: number[];
    indexBlocks: number;
    calls: number;
    warmup: number;
    blockChars: number;
    textChars: [number, number];
    inFlight: number;
    policies: PolicyName[];
    policyParams: PolicyParams;
    seed: number;
  };
  requests: { total: number; followUps: number; fresh: number; meanChars: number };
  byWorkers: WorkerCountResult[];
  allWithinBudget: boolean;
}

interface Conversation {
  group: number;
  hashes: number[];
  /** kept only for the conversations that follow-up requests extend */
  text?: string;
}

/** GC pauses observed while measuring (PerformanceObserver, started on first use) */
const gcLog: { startTime: number; duration: number }[] = [];
let gcObserver: PerformanceObserver | undefined;

function observeGc(): void {
  if (gcObserver) return;
  gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcLog.push({ startTime: e.startTime, duration: e.duration });
  });
  gcObserver.observe({ entryTypes: ['gc'] });
}

function forceGc(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    if (typeof gc !== 'function') return undefined;
    // twice: the first full GC may leave objects that only become unreachable once it ran
    return () => {
      (gc as () => void)();
      (gc as () => void)();
    };
  } catch {
    return undefined;
  }
}

function mib(bytes: number): number {
  return round(bytes / 2 ** 20, 1);
}

/**
 * A gateway-like RoutingContext over a fresh Replica; counts recorded cache deltas. The recorder
 * is flushed by the measuring loop (the gateway's flushes on setImmediate).
 */
function gatewayContext(blockChars: number, params: PolicyParams, seed: number) {
  const replica = new Replica({
    nodeId: 'bench-node',
    cacheBlocksPerWorker: Math.max(1, Math.floor(params.maxTreeSize / blockChars)),
  });
  const stats = { records: 0, fromDepth: 0, blocks: 0 };
  const recorder = new CacheRecorder(
    (ev) => replica.apply(ev),
    () => packHlc(replica.tick()),
    null,
  );
  const record = (model: string, workerId: string, hashes: BlockList, fromDepth: number): void => {
    stats.records++;
    if (fromDepth > 0) stats.fromDepth++;
    stats.blocks += hashes.length - fromDepth; // the length is known before the hashes are
    recorder.record(model, workerId, hashes, fromDepth);
  };
  const ctx: RoutingContext = {
    load: replica.load,
    cache: replica.cache,
    blockChars,
    recordCache: record,
    recordCacheDeferred: record,
    random: seededRandom(seed),
    now: Date.now,
    branch: () => undefined,
  };
  return { replica, ctx, stats, recorder };
}

/**
 * Synthetic conversations: `groups` system prompts of 0.5–1.5 KB, each conversation = a group's
 * system prompt + alternating user / assistant turns up to 0.7–3.7 KB (the routing text SMG
 * extracts: message texts joined by spaces). Generated lazily, deterministic from the seed.
 */
class ConversationSource {
  readonly systems: string[] = [];
  private readonly rnd: () => number;

  constructor(
    seed: number,
    groups: number,
    private readonly blockChars: number,
    private readonly textChars: [number, number],
  ) {
    this.rnd = seededRandom(seed);
    for (let g = 0; g < groups; g++)
      this.systems.push(randomText(this.rnd, 512 + Math.floor(this.rnd() * 1024)));
  }

  /** the indexed part of a conversation: leaves ~300 chars of the request range for the new message */
  next(keepText: boolean): Conversation {
    const rnd = this.rnd;
    const group = Math.floor(rnd() * this.systems.length);
    const [lo, hi] = this.textChars;
    const target = Math.max(lo, lo + Math.floor(rnd() * (hi - lo)) - 300);
    const parts = [this.systems[group]];
    let len = parts[0].length;
    let user = true;
    while (len < target) {
      const n = Math.min(target - len, user ? 100 + Math.floor(rnd() * 300) : 100 + Math.floor(rnd() * 500));
      parts.push(randomText(rnd, Math.max(1, n)));
      len += n + 1;
      user = !user;
    }
    const text = parts.join(' ');
    return { group, hashes: blockHashes(text, this.blockChars), text: keepText ? text : undefined };
  }
}

interface Workload {
  conversations: Conversation[];
  requests: RouteRequest[];
  followUps: number;
}

/**
 * Builds the conversations (until `indexBlocks` distinct blocks) and the requests; both are shared
 * by every worker count, only the placement differs.
 */
function buildWorkload(
  p: Required<Pick<RoutingBenchParams, 'indexBlocks' | 'calls' | 'warmup' | 'seed' | 'textChars'>>,
  blockChars: number,
): Workload {
  const groups = Math.max(4, Math.min(256, Math.round(p.indexBlocks / 4000)));
  const src = new ConversationSource(p.seed, groups, blockChars, p.textChars);
  const conversations: Conversation[] = [];
  const seen = new Set<number>();
  const total = p.calls + p.warmup;
  // follow-ups pick among the most recent conversations whose text was kept
  const keepEvery = 2;
  while (seen.size < p.indexBlocks) {
    const c = src.next(conversations.length % keepEvery === 0);
    for (const h of c.hashes) seen.add(h);
    conversations.push(c);
  }
  seen.clear();
  const withText = conversations.filter((c) => c.text !== undefined);
  const rnd = seededRandom(p.seed ^ 0x5eed);
  const requests: RouteRequest[] = [];
  let followUps = 0;
  const [lo, hi] = p.textChars;
  const baseHeaders = {
    'content-type': 'application/json',
    'user-agent': 'bench/1.0',
    accept: 'application/json',
  };
  for (let i = 0; i < total; i++) {
    let text: string;
    let key: string;
    if (i % 2 === 0 && withText.length > 0) {
      const ci = Math.floor(rnd() * withText.length);
      const c = withText[ci];
      // joined as the gateway's extractRoutingText joins messages: a flat string, not a rope
      text = [c.text, randomText(rnd, 200 + Math.floor(rnd() * 200))].join(' ');
      key = `conv-${ci}`;
      followUps++;
    } else {
      const len = lo + Math.floor(rnd() * (hi - lo));
      // half of the new conversations start with a known system prompt (a new chat in a known app)
      const sys = rnd() < 0.5 ? `${src.systems[Math.floor(rnd() * src.systems.length)]} ` : '';
      text = [sys, randomText(rnd, Math.max(1, len - sys.length))].join('');
      key = `new-${i}`;
    }
    requests.push({ model: MODEL, text, headers: { ...baseHeaders, 'x-smg-routing-key': key } });
  }
  return { conversations, requests, followUps };
}

/** The benchmark's core: returns timings per worker count and policy. No I/O. */
export async function runRoutingCore(params: RoutingBenchParams): Promise<RoutingCoreResult> {
  const launch = parseLaunchArgs([], {});
  const policyParams = params.policyParams ?? launch.policyParams;
  const blockChars = params.blockChars ?? launch.prefixBlockChars;
  const seed = params.seed ?? 42;
  const textChars = params.textChars ?? [1024, 4096];
  const policies = [...(params.policies ?? POLICY_NAMES)];
  const say = params.verbose ? log : () => undefined;
  const gc = forceGc();
  observeGc();

  say(`routing: building workload (${params.indexBlocks} blocks, ${params.calls + params.warmup} requests)`);
  const t0 = Date.now();
  const wl = buildWorkload(
    { indexBlocks: params.indexBlocks, calls: params.calls, warmup: params.warmup, seed, textChars },
    blockChars,
  );
  let chars = 0;
  for (const r of wl.requests) chars += r.text.length;
  say(
    `routing: ${wl.conversations.length} conversations, ${wl.requests.length} requests in ${Date.now() - t0} ms`,
  );

  const byWorkers: WorkerCountResult[] = [];
  for (const n of params.workerCounts) {
    // one call per worker count, so the previous index is unreachable (and collected) before the next
    byWorkers.push(
      await runWorkerCount(n, wl, policies, params.warmup, policyParams, blockChars, seed, gc, say),
    );
  }
  return {
    params: {
      workerCounts: params.workerCounts,
      indexBlocks: params.indexBlocks,
      calls: params.calls,
      warmup: params.warmup,
      blockChars,
      textChars,
      inFlight: IN_FLIGHT,
      policies,
      policyParams,
      seed,
    },
    requests: {
      total: wl.requests.length,
      followUps: wl.followUps,
      fresh: wl.requests.length - wl.followUps,
      meanChars: Math.round(chars / Math.max(1, wl.requests.length)),
    },
    byWorkers,
    allWithinBudget: byWorkers.every((b) => b.policies.every((t) => t.withinBudget)),
  };
}

async function runWorkerCount(
  n: number,
  wl: Workload,
  policies: readonly PolicyName[],
  warmup: number,
  policyParams: PolicyParams,
  blockChars: number,
  seed: number,
  gc: (() => void) | undefined,
  say: (msg: string) => void,
): Promise<WorkerCountResult> {
  const workers: WorkerView[] = Array.from({ length: n }, (_, i) =>
    makeWorker(`w${i}`, `http://127.0.0.1:${20000 + i}`, { models: [MODEL] }),
  );
  const cpu = cpuWindow();
  gc?.();
  const heapBefore = process.memoryUsage().heapUsed;
  const buffersBefore = process.memoryUsage().arrayBuffers;
  const { replica, ctx, stats, recorder } = gatewayContext(blockChars, policyParams, seed);
  const tf = Date.now();
  const rnd = seededRandom(seed + n);
  for (const c of wl.conversations) {
    const w = workers[Math.floor(rnd() * n)];
    replica.apply({
      kind: 'cache.blocks',
      model: MODEL,
      worker: w.id,
      anchor: 0,
      hashes: c.hashes,
      seen: packHlc(replica.tick()),
    });
  }
  const fillMs = Date.now() - tf;
  gc?.();
  const indexHeapMiB = gc ? mib(process.memoryUsage().heapUsed - heapBefore) : NaN;
  const indexExternalMiB = mib(process.memoryUsage().arrayBuffers - buffersBefore);
  const indexBlocks = replica.cache.size();
  say(
    `routing: ${n} workers: index ${indexBlocks} blocks in ${fillMs} ms ` +
      `(~${indexHeapMiB} MiB heap + ${indexExternalMiB} MiB array buffers)`,
  );

  const timings: PolicyTiming[] = [];
  let engineLoads = false;
  for (const name of policies) {
    if (LOAD_AWARE.has(name) && !engineLoads) {
      // the gateway polls engine loads only for load-aware policies; from here on every worker has one
      engineLoads = true;
      const lr = seededRandom(seed * 7 + n);
      for (const w of workers) {
        replica.load.applyEngineLoad({
          kind: 'worker.engine_load',
          id: w.id,
          load: {
            tokenUsage: 0.1 + 0.5 * lr(),
            numRunningReqs: Math.floor(lr() * 32),
            numWaitingReqs: Math.floor(lr() * 4),
            numWaitingUncachedTokens: Math.floor(lr() * 4096),
            genThroughput: 1000 + Math.floor(lr() * 2000),
            numUsedTokens: Math.floor(lr() * 100_000),
          },
          hlc: replica.tick(),
        });
      }
    }
    // start each policy from a collected heap, so one policy's garbage does not land in the next one's calls
    gc?.();
    const g0 = performance.now();
    const timing = measurePolicy(
      name,
      workers,
      wl.requests,
      warmup,
      policyParams,
      ctx,
      stats,
      replica,
      recorder,
    );
    const g1 = performance.now();
    // GC entries are delivered asynchronously (not within one setImmediate): wait, then take those inside
    await new Promise((r) => setTimeout(r, 20));
    const pauses = gcLog.filter((e) => e.startTime >= g0 && e.startTime <= g1);
    gcLog.length = 0;
    timing.gcPauses = pauses.length;
    timing.gcMs = round(
      pauses.reduce((a, e) => a + e.duration, 0),
      2,
    );
    timing.gcMaxMs = round(
      pauses.reduce((a, e) => Math.max(a, e.duration), 0),
      2,
    );
    timings.push(timing);
    const t = timings[timings.length - 1];
    const rec = t.recordUs ? ` (record p50 ${t.recordUs.p50} µs p99 ${t.recordUs.p99} µs)` : '';
    say(`routing: ${n} workers ${name}: p50 ${t.p50Us} µs p99 ${t.p99Us} µs max ${t.maxUs} µs${rec}`);
  }
  const worst = timings.reduce((a, b) => (b.p99Us > a.p99Us ? b : a), timings[0]);
  return {
    workers: n,
    indexBlocks,
    indexBlocksAfter: replica.cache.size(),
    conversations: wl.conversations.length,
    fillMs,
    indexHeapMiB,
    indexExternalMiB,
    rssMiB: mib(process.memoryUsage().rss),
    policies: timings,
    worstP99Us: worst?.p99Us ?? NaN,
    worstPolicy: worst?.policy ?? policies[0],
    cpu: cpu.end(),
  };
}

function measurePolicy(
  name: PolicyName,
  workers: readonly WorkerView[],
  requests: readonly RouteRequest[],
  warmup: number,
  policyParams: PolicyParams,
  ctx: RoutingContext,
  stats: { records: number; fromDepth: number; blocks: number },
  replica: Replica,
  recorder: CacheRecorder,
): PolicyTiming {
  const policy = createPolicy(name, policyParams, ctx);
  policy.onWorkersChanged?.(workers);
  const calls = requests.length - warmup;
  const samples = new Float64Array(calls);
  const recordSamples: number[] = [];
  const picks = new Map<string, number>();
  const inflight: string[] = [];
  let routed = 0;
  let unrouted = 0;
  let statsAtStart = { ...stats };
  for (let i = 0; i < requests.length; i++) {
    if (i === warmup) statsAtStart = { ...stats };
    const req = requests[i];
    const t0 = process.hrtime.bigint();
    const w = policy.select(workers, req);
    const t1 = process.hrtime.bigint();
    if (i >= warmup) samples[i - warmup] = Number(t1 - t0) / 1000;
    if (recorder.pending > 0) {
      // the gateway applies queued deltas after the decision: outside the timed call, timed apart
      const r0 = process.hrtime.bigint();
      recorder.flush();
      const r1 = process.hrtime.bigint();
      if (i >= warmup) recordSamples.push(Number(r1 - r0) / 1000);
    }
    if (w === undefined) {
      unrouted++;
      continue;
    }
    routed++;
    if (i >= warmup) picks.set(w.id, (picks.get(w.id) ?? 0) + 1);
    // keep IN_FLIGHT requests in flight, as a gateway under load would
    replica.load.acquire(w.id);
    inflight.push(w.id);
    if (inflight.length > IN_FLIGHT) replica.load.release(inflight.shift() as string);
  }
  for (const id of inflight) replica.load.release(id);
  const d = distribution(samples, 3);
  let maxPicks = 0;
  for (const v of picks.values()) maxPicks = Math.max(maxPicks, v);
  const timing: PolicyTiming = {
    policy: name,
    workers: workers.length,
    calls,
    meanUs: d.mean,
    p50Us: d.p50,
    p90Us: d.p90,
    p99Us: d.p99,
    maxUs: d.max,
    routed,
    unrouted,
    distinctWorkers: picks.size,
    maxOverMeanPicks: round(maxPicks / (calls / workers.length), 2),
    withinBudget: d.p99 <= BUDGET_P99_US,
  };
  if (name === 'cache_aware') {
    timing.cacheHits = stats.fromDepth - statsAtStart.fromDepth;
    timing.blocksRecorded = stats.blocks - statsAtStart.blocks;
  }
  if (recordSamples.length > 0) timing.recordUs = distribution(recordSamples, 3);
  return timing;
}

export async function runRoutingBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('routing', opts);
  const params: RoutingBenchParams = opts.quick
    ? { workerCounts: [8, 64, 512], indexBlocks: 10_000, calls: 2_000, warmup: 500, verbose: true }
    : { workerCounts: [8, 64, 512], indexBlocks: 1_000_000, calls: 20_000, warmup: 2_000, verbose: true };
  const started = Date.now();
  const core = await runRoutingCore(params);
  const result = {
    ...header,
    budget: { p99Us: BUDGET_P99_US },
    ...core,
    durationS: round((Date.now() - started) / 1000, 1),
    loadAvgAfter: loadAvg(),
  };
  const parts = core.byWorkers.map(
    (b) => `${b.workers}w worst p99 ${b.worstP99Us} µs (${b.worstPolicy}), index ${b.indexBlocks} blocks`,
  );
  const summary = `${parts.join(' | ')} | all p99 <= ${BUDGET_P99_US} µs: ${core.allWithinBudget ? 'yes' : 'NO'}`;
  return { result, summary };
}
