import { describe, expect, it } from 'vitest';
import { createConsistentHashingPolicy } from './consistent-hashing.js';
import { HashRing, numberPosition, ringPosition } from './hash-ring.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';
import type { RouteRequest } from './types.js';

const keyed = (key: string): RouteRequest => makeRequest({ headers: { 'x-smg-routing-key': key } });

describe('consistent_hashing', () => {
  it('maps the same key to the same worker and spreads keys over all workers', () => {
    const ctx = makeContext();
    const p = createConsistentHashingPolicy(testParams(), ctx);
    const workers = makeWorkers(4);
    p.onWorkersChanged?.(workers);
    const counts = new Map<string, number>();
    for (let i = 0; i < 4000; i++) {
      const w = p.select(workers, keyed(`user-${i}`))!;
      expect(p.select(workers, keyed(`user-${i}`))).toBe(w);
      counts.set(w.id, (counts.get(w.id) ?? 0) + 1);
    }
    for (const w of workers) expect(counts.get(w.id)! / 4000).toBeGreaterThan(0.15);
    expect(ctx.branchCount('consistent_hashing', 'routing_key_hit')).toBe(8000);
    expect(p.needsText).toBe(false);
  });

  it('removing a worker remaps only its own keys (~1/n), and adding one takes only ~1/n', () => {
    const p = createConsistentHashingPolicy(testParams(), makeContext());
    const all = makeWorkers(5);
    p.onWorkersChanged?.(all);
    const before = new Map<string, string>();
    for (let i = 0; i < 5000; i++) before.set(`k${i}`, p.select(all, keyed(`k${i}`))!.id);

    // w2 unhealthy: it leaves the candidates, the ring stays
    const without = all.filter((w) => w.id !== 'w2');
    let moved = 0;
    for (const [k, id] of before) {
      const now = p.select(without, keyed(k))!.id;
      if (id === 'w2') expect(now).not.toBe('w2');
      else expect(now).toBe(id);
      if (now !== id) moved++;
    }
    expect(moved / 5000).toBeGreaterThan(0.1);
    expect(moved / 5000).toBeLessThan(0.3);

    // w2 removed for good: the rebuilt ring agrees
    p.onWorkersChanged?.(without);
    for (const [k, id] of before) if (id !== 'w2') expect(p.select(without, keyed(k))!.id).toBe(id);

    // a new worker only takes keys, it never shuffles the others
    const grown = [...without, ...makeWorkers(6).slice(5)];
    p.onWorkersChanged?.(grown);
    let taken = 0;
    for (const [k, id] of before) {
      if (id === 'w2') continue;
      const now = p.select(grown, keyed(k))!.id;
      if (now !== id) {
        expect(now).toBe('w5');
        taken++;
      }
    }
    expect(taken / 4000).toBeLessThan(0.35);
  });

  it('agrees across instances (peers) and candidate orders, and builds the ring lazily', () => {
    const a = createConsistentHashingPolicy(testParams(), makeContext({ seed: 1 }));
    const b = createConsistentHashingPolicy(testParams(), makeContext({ seed: 2 }));
    const workers = makeWorkers(6);
    a.onWorkersChanged?.(workers);
    const reversed = [...workers].reverse();
    for (let i = 0; i < 500; i++)
      expect(b.select(reversed, keyed(`s${i}`))).toBe(a.select(workers, keyed(`s${i}`)));
  });

  it('x-smg-target-worker by index, URL or id; a miss falls back to the routing key', () => {
    const ctx = makeContext();
    const p = createConsistentHashingPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    const target = (t: string, extra: Record<string, string> = {}) =>
      p.select(workers, makeRequest({ headers: { 'x-smg-target-worker': t, ...extra } }));
    expect(target('1')).toBe(workers[1]);
    expect(target('http://w2:8000')).toBe(workers[2]);
    expect(target('w0')).toBe(workers[0]);
    expect(target('2', { 'x-smg-routing-key': 'k' })).toBe(workers[2]); // target wins over the key
    expect(ctx.branchCount('consistent_hashing', 'target_worker_hit')).toBe(4);

    const viaKey = p.select(workers, keyed('session-9'));
    expect(target('7', { 'x-smg-routing-key': 'session-9' })).toBe(viaKey);
    expect(target('http://gone:1', { 'x-smg-routing-key': 'session-9' })).toBe(viaKey);
    expect(workers).toContain(target('nope'));
    expect(ctx.branchCount('consistent_hashing', 'target_worker_miss')).toBe(3);
  });

  it('an unavailable target (not a candidate) is a miss', () => {
    const ctx = makeContext();
    const p = createConsistentHashingPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    const candidates = workers.slice(0, 2);
    const w = p.select(candidates, makeRequest({ headers: { 'x-smg-target-worker': 'w2' } }));
    expect(candidates).toContain(w);
    expect(ctx.branchCount('consistent_hashing', 'target_worker_miss')).toBe(1);
  });

  it('implicit key: authorization, then x-forwarded-for, then cookie', () => {
    const ctx = makeContext();
    const p = createConsistentHashingPolicy(testParams(), ctx);
    const workers = makeWorkers(8);
    const pick = (headers: Record<string, string | string[]>) => p.select(workers, makeRequest({ headers }))!;
    for (let i = 0; i < 50; i++) {
      const auth = `Bearer sk-${i}`;
      expect(pick({ authorization: auth, cookie: 'c' })).toBe(pick({ 'x-smg-routing-key': auth }));
      expect(pick({ authorization: '', 'x-forwarded-for': `10.0.0.${i}` })).toBe(
        pick({ 'x-smg-routing-key': `10.0.0.${i}` }),
      );
      expect(pick({ cookie: ['', `sid=${i}`] })).toBe(pick({ 'x-smg-routing-key': `sid=${i}` }));
    }
    expect(ctx.branchCount('consistent_hashing', 'random_fallback')).toBe(0);
  });

  it('no key: random fallback; no candidates: undefined', () => {
    const ctx = makeContext({ seed: 5 });
    const p = createConsistentHashingPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) seen.add(p.select(workers, makeRequest())!.id);
    expect(seen.size).toBe(3);
    expect(ctx.branchCount('consistent_hashing', 'random_fallback')).toBe(100);
    expect(p.select([], keyed('k'))).toBeUndefined();
    expect(ctx.branchCount('consistent_hashing', 'no_healthy_workers')).toBe(1);
  });
});

describe('ring positions', () => {
  /** max relative deviation from uniform over `buckets` equal slices of [0, 2^53) */
  function spread(positions: number[], buckets = 8): number {
    const counts = new Array<number>(buckets).fill(0);
    for (const p of positions) {
      expect(Number.isSafeInteger(p) && p >= 0).toBe(true);
      counts[Math.floor((p / 2 ** 53) * buckets)]++;
    }
    const mean = positions.length / buckets;
    return Math.max(...counts.map((c) => Math.abs(c - mean) / mean));
  }

  it('spread string keys and number keys (sequential ones too) evenly over the ring', () => {
    expect(spread(Array.from({ length: 16000 }, (_, i) => ringPosition(`user-${i}`)))).toBeLessThan(0.12);
    expect(
      spread(Array.from({ length: 16000 }, (_, i) => ringPosition(`http://10.0.0.1:8000#${i}`))),
    ).toBeLessThan(0.12);
    expect(spread(Array.from({ length: 16000 }, (_, i) => numberPosition(i + 1)))).toBeLessThan(0.12);
    for (const stride of [2 ** 21, 2 ** 32, 2 ** 40]) {
      expect(spread(Array.from({ length: 16000 }, (_, i) => numberPosition((i + 1) * stride)))).toBeLessThan(
        0.12,
      );
    }
    expect(ringPosition('a')).not.toBe(ringPosition('b'));
    expect(ringPosition('ab')).not.toBe(ringPosition('ba'));
  });
});

describe('HashRing', () => {
  it('places 150 virtual nodes per URL deterministically and walks clockwise', () => {
    const ring = new HashRing(['http://b', 'http://a', 'http://a']);
    expect(ring.urls).toEqual(['http://a', 'http://b']);
    expect(ringPosition('x')).toBe(ringPosition('x'));
    expect(Number.isSafeInteger(ringPosition('x'))).toBe(true);
    const first = ring.walk(ringPosition('key'), (u) => u);
    const other = first === 'http://a' ? 'http://b' : 'http://a';
    expect(ring.walk(ringPosition('key'), (u) => (u === first ? undefined : u))).toBe(other);
    expect(ring.walk(0, () => undefined)).toBeUndefined();
    expect(new HashRing([]).walk(5, (u) => u)).toBeUndefined();
    expect(ring.walk(2 ** 53, (u) => u)).toBeDefined(); // wraps past the last node
  });
});
