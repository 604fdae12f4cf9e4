/**
 * The merge laws of the state spine, property-tested for every event kind: applying the same set of
 * events in any order, with any duplication, and in any grouping gives the same replicated state.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { StateEvent } from './events.js';
import type { Hlc } from './hlc.js';
import { Replica } from './replica.js';
import type { WorkerSpec, WorkerStatus } from './worker.js';

const WORKERS = ['w1', 'w2', 'w3', 'w4'];
const NODES = ['n1', 'n2', 'n3'];
const MODELS = ['m1', 'm2'];
const STATUSES: WorkerStatus[] = ['pending', 'ready', 'not_ready', 'failed', 'draining'];
const RATE_KEYS = ['tenant:auth:a', 'tenant:ip:10.0.0.1', 'rule:gpt:auth:a'];
/** the replicas' clock: rate-limit windows are judged against it (older than the previous are dropped) */
const NOW = 1_700_000_030_000;
const WINDOW_MS = 60_000;
const CUR_WINDOW = Math.floor(NOW / WINDOW_MS);

function spec(url: string, priority: number): WorkerSpec {
  return {
    url,
    models: ['m1'],
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels: {},
    priority,
    cost: 1,
    health: {},
    max_connection_attempts: 20,
  };
}

/** an arbitrary event; `i` (its position in the generated list) keeps HLCs and seqs unique */
const rawEvent = fc.record({
  kind: fc.constantFrom(
    'worker.upsert',
    'worker.remove',
    'worker.health',
    'worker.engine_load',
    'load.snapshot',
    'cache.blocks',
    'ratelimit.slots',
  ),
  worker: fc.constantFrom(...WORKERS),
  node: fc.constantFrom(...NODES),
  wall: fc.integer({ min: 1_700_000_000_000, max: 1_700_000_000_050 }),
  status: fc.constantFrom(...STATUSES),
  priority: fc.integer({ min: 0, max: 100 }),
  model: fc.constantFrom(...MODELS),
  hashes: fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 6 }),
  anchor: fc.integer({ min: 0, max: 40 }),
  usage: fc.double({ min: 0, max: 1, noNaN: true }),
  rateKey: fc.constantFrom(...RATE_KEYS),
  // two windows too old to matter, the two the estimate reads, one ahead (a peer's clock runs fast)
  windowOffset: fc.integer({ min: -3, max: 1 }),
  requests: fc.integer({ min: 0, max: 50 }),
  tokens: fc.integer({ min: 0, max: 5000 }),
});

type Raw = typeof rawEvent extends fc.Arbitrary<infer T> ? T : never;

function toEvent(r: Raw, i: number): StateEvent {
  const hlc: Hlc = { wall: r.wall, counter: i, node: r.node };
  switch (r.kind) {
    case 'worker.upsert':
      return { kind: 'worker.upsert', id: r.worker, spec: spec(`http://${r.worker}:8000`, r.priority), hlc };
    case 'worker.remove':
      return { kind: 'worker.remove', id: r.worker, hlc };
    case 'worker.health':
      return { kind: 'worker.health', id: r.worker, status: r.status, hlc };
    case 'worker.engine_load':
      return {
        kind: 'worker.engine_load',
        id: r.worker,
        hlc,
        load: {
          tokenUsage: r.usage,
          numRunningReqs: i,
          numWaitingReqs: 0,
          numWaitingUncachedTokens: 0,
          genThroughput: 0,
          numUsedTokens: i,
        },
      };
    case 'load.snapshot':
      // a node never reuses a seq: the content is a function of (origin, seq)
      return {
        kind: 'load.snapshot',
        origin: r.node,
        seq: i,
        at: r.wall,
        ttlMs: 1000,
        inflight: { [r.worker]: i % 7 },
      };
    case 'ratelimit.slots':
      // slots are not monotone here on purpose: the max merge must not care
      return {
        kind: 'ratelimit.slots',
        origin: r.node,
        key: r.rateKey,
        window: CUR_WINDOW + r.windowOffset,
        windowMs: WINDOW_MS,
        requests: r.requests,
        tokens: r.tokens,
      };
    default:
      return {
        kind: 'cache.blocks',
        model: r.model,
        worker: r.worker,
        anchor: r.anchor,
        hashes: r.hashes,
        seen: r.wall * 1024 + (i % 1024),
      };
  }
}

const eventsFrom = (offset: number) =>
  fc.array(rawEvent, { minLength: 1, maxLength: 40 }).map((rs) => rs.map((r, i) => toEvent(r, offset + i)));
const events = eventsFrom(0);

function stateAfter(evs: readonly StateEvent[]): unknown {
  const r = new Replica({ nodeId: 'observer', now: () => NOW, rateLimitWindowMs: WINDOW_MS });
  for (const e of evs) r.apply(e);
  return r.exportState();
}

function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const out = [...xs];
  let s = seed >>> 0 || 1;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

describe('Replica.apply merge laws', () => {
  it('is commutative: any order of the same events gives the same state', () => {
    fc.assert(
      fc.property(events, fc.integer(), (evs, seed) => {
        expect(stateAfter(shuffled(evs, seed))).toEqual(stateAfter(evs));
      }),
      { numRuns: 300 },
    );
  });

  it('is idempotent: duplicated events change nothing', () => {
    fc.assert(
      fc.property(events, fc.integer(), (evs, seed) => {
        const dup = shuffled([...evs, ...evs, ...evs.slice(0, evs.length >> 1)], seed);
        expect(stateAfter(dup)).toEqual(stateAfter(evs));
      }),
      { numRuns: 300 },
    );
  });

  it('is associative: merging replicas in any grouping converges', () => {
    fc.assert(
      // offsets keep HLCs unique across the three replicas' own writes
      fc.property(eventsFrom(0), eventsFrom(100), eventsFrom(200), (a, b, c) => {
        // (a ∪ b) ∪ c versus a ∪ (b ∪ c): replicas that exchanged logs in different groupings
        const left = stateAfter([...[...a, ...b], ...c]);
        const right = stateAfter([...a, ...[...b, ...c].reverse()]);
        expect(right).toEqual(left);
      }),
      { numRuns: 200 },
    );
  });

  it('holds per event kind in isolation as well', () => {
    const kinds = [
      'worker.upsert',
      'worker.remove',
      'worker.health',
      'worker.engine_load',
      'load.snapshot',
      'cache.blocks',
      'ratelimit.slots',
    ] as const;
    for (const kind of kinds) {
      fc.assert(
        fc.property(
          fc
            .array(
              rawEvent.map((r) => ({ ...r, kind })),
              { minLength: 1, maxLength: 30 },
            )
            .map((rs) => rs.map(toEvent)),
          fc.integer(),
          (evs, seed) => {
            expect(stateAfter([...shuffled(evs, seed), ...evs])).toEqual(stateAfter(evs));
          },
        ),
        { numRuns: 100 },
      );
    }
  });
});

describe('Replica semantics', () => {
  const hlc = (wall: number, node = 'n1', counter = 0): Hlc => ({ wall, counter, node });

  it('a removed worker stays removed whatever the timestamps (remove wins)', () => {
    const r = new Replica({ nodeId: 'x' });
    r.apply({ kind: 'worker.remove', id: 'w1', hlc: hlc(5) });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 50), hlc: hlc(9) });
    expect(r.registry.get('w1')).toBeUndefined();
  });

  it('the newest upsert wins; health joins the view; only ready workers are routable', () => {
    const r = new Replica({ nodeId: 'x' });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 10), hlc: hlc(2) });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 20), hlc: hlc(1) });
    expect(r.registry.get('w1')?.spec.priority).toBe(10);
    expect(r.registry.get('w1')?.status).toBe('pending');
    expect(r.registry.routable('m1')).toHaveLength(0);
    r.apply({ kind: 'worker.health', id: 'w1', status: 'ready', hlc: hlc(3) });
    expect(r.registry.routable('m1').map((w) => w.id)).toEqual(['w1']);
    expect(r.registry.routable().map((w) => w.id)).toEqual(['w1']);
  });

  it('removing a worker drops it from the prefix index and ignores later cache deltas for it', () => {
    const r = new Replica({ nodeId: 'x' });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 10), hlc: hlc(1) });
    r.apply({ kind: 'cache.blocks', model: 'm1', worker: 'w1', anchor: 0, hashes: [11, 12, 13], seen: 1024 });
    expect(r.cache.match('m1', [11, 12, 13]).depths.get('w1')).toBe(3);
    r.apply({ kind: 'worker.remove', id: 'w1', hlc: hlc(2) });
    expect(r.cache.match('m1', [11, 12, 13]).depths.size).toBe(0);
    r.apply({ kind: 'cache.blocks', model: 'm1', worker: 'w1', anchor: 0, hashes: [11], seen: 2048 });
    expect(r.cache.size()).toBe(0);
  });

  it('a duplicate registration of a URL hands its prefix blocks to the surviving id, late deltas too', () => {
    const r = new Replica({ nodeId: 'x' });
    // two peers registered the same engine at once; every peer keeps the smaller id
    r.apply({ kind: 'worker.upsert', id: 'w2', spec: spec('http://a:1', 10), hlc: hlc(1) });
    r.apply({ kind: 'cache.blocks', model: 'm1', worker: 'w2', anchor: 0, hashes: [11, 12, 13], seen: 1024 });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 10), hlc: hlc(2) });
    r.apply({ kind: 'cache.blocks', model: 'm1', worker: 'w1', anchor: 0, hashes: [11], seen: 4096 });
    r.apply({ kind: 'worker.remove', id: 'w2', hlc: hlc(3) });
    const m = r.cache.match('m1', [11, 12, 13]);
    expect(m.depths.get('w1')).toBe(3);
    expect(m.depths.has('w2')).toBe(false);
    // a delta routed to the duplicate by a peer that had not collapsed it yet
    r.apply({ kind: 'cache.blocks', model: 'm1', worker: 'w2', anchor: 13, hashes: [14], seen: 8192 });
    expect(r.cache.match('m1', [11, 12, 13, 14]).depths.get('w1')).toBe(4);
    // an engine removed for good takes its blocks along
    r.apply({ kind: 'worker.remove', id: 'w1', hlc: hlc(4) });
    expect(r.cache.size()).toBe(0);
  });

  it("a duplicate registration's health observations count for the surviving id", () => {
    const r = new Replica({ nodeId: 'x' });
    r.apply({ kind: 'worker.upsert', id: 'w2', spec: spec('http://a:1', 10), hlc: hlc(1) });
    r.apply({ kind: 'worker.health', id: 'w2', status: 'ready', hlc: hlc(2, 'n2') });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 10), hlc: hlc(3) });
    expect(r.registry.get('w1')?.status).toBe('pending');
    r.apply({ kind: 'worker.remove', id: 'w2', hlc: hlc(4) });
    // the engine answered n2 a moment ago: it does not go dark while w1's probes get going
    expect(r.registry.get('w1')?.status).toBe('ready');
    expect(r.registry.routable('m1').map((w) => w.id)).toEqual(['w1']);
    // a later word about the duplicate is a word about the survivor
    r.apply({ kind: 'worker.health', id: 'w2', status: 'not_ready', hlc: hlc(5, 'n2') });
    expect(r.registry.get('w1')?.status).toBe('not_ready');
  });

  it('cluster load is the local count plus unexpired remote snapshots', () => {
    const r = new Replica({ nodeId: 'self' });
    r.load.acquire('w1');
    r.load.acquire('w1');
    r.apply({ kind: 'load.snapshot', origin: 'n2', seq: 1, at: 1000, ttlMs: 500, inflight: { w1: 3 } });
    r.apply({ kind: 'load.snapshot', origin: 'n3', seq: 4, at: 1000, ttlMs: 5000, inflight: { w1: 1 } });
    // an older seq from the same origin is ignored; the node's own snapshots are ignored
    r.apply({ kind: 'load.snapshot', origin: 'n3', seq: 2, at: 1000, ttlMs: 5000, inflight: { w1: 100 } });
    r.apply({ kind: 'load.snapshot', origin: 'self', seq: 9, at: 1000, ttlMs: 5000, inflight: { w1: 100 } });
    expect(r.load.inflight('w1')).toBe(6);
    r.load.expire(1600);
    expect(r.load.inflight('w1')).toBe(3);
    r.load.dropOrigin('n3');
    r.load.release('w1');
    expect(r.load.inflight('w1')).toBe(1);
  });

  it('the HLC moves past remote timestamps so local writes order after what was seen', () => {
    const r = new Replica({ nodeId: 'n1', now: () => 100 });
    r.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', 10), hlc: hlc(5000, 'n9', 7) });
    const t = r.tick();
    expect(t.wall).toBe(5000);
    expect(t.counter).toBe(8);
  });
});

describe('Replica rate-limit usage', () => {
  it('sums the slots of every node and keeps the max of each slot', () => {
    const r = new Replica({ nodeId: 'self', now: () => NOW, rateLimitWindowMs: WINDOW_MS });
    const slot = (origin: string, requests: number, tokens: number, window = CUR_WINDOW): StateEvent => ({
      kind: 'ratelimit.slots',
      origin,
      key: 'k',
      window,
      windowMs: WINDOW_MS,
      requests,
      tokens,
    });
    expect(r.apply(slot('n2', 3, 300))).toBe(true);
    expect(r.apply(slot('n3', 2, 50))).toBe(true);
    // an older value of n2's slot and a duplicate change nothing
    expect(r.apply(slot('n2', 1, 100))).toBe(false);
    expect(r.apply(slot('n3', 2, 50))).toBe(false);
    // a window older than the previous one no longer counts
    expect(r.apply(slot('n4', 9, 900, CUR_WINDOW - 2))).toBe(false);
    // a different window length is a different counter: ignored
    expect(r.apply({ ...slot('n4', 9, 900), windowMs: 1000 } as StateEvent)).toBe(false);
    r.rateLimits.add('k', 1, 10, NOW);
    const est = r.rateLimits.estimate('k', NOW);
    expect(est).toEqual({ requests: 6, tokens: 360 });
  });
});
