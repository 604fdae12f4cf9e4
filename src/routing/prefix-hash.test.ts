import { describe, expect, it } from 'vitest';
import { createPrefixHashPolicy, prefixKey } from './prefix-hash.js';
import { makeContext, makeRequest, makeWorkers, seededRandom, testParams } from './testing.js';

function randomText(seed: number, n: number): string {
  const r = seededRandom(seed);
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + Math.floor(r() * 26));
  return s;
}

describe('prefix_hash', () => {
  it('routes texts that share the first ~prefixTokenCount × 4 chars to the same worker (HTTP mode)', () => {
    const ctx = makeContext({ blockChars: 64 });
    const p = createPrefixHashPolicy(testParams(), ctx); // 256 tokens ≈ 1024 chars = 16 blocks
    const workers = makeWorkers(5);
    p.onWorkersChanged?.(workers);
    expect(p.needsText).toBe(true);
    for (let s = 0; s < 30; s++) {
      const prefix = randomText(s, 1024);
      const w = p.select(workers, makeRequest({ text: prefix + randomText(1000 + s, 500) }));
      expect(p.select(workers, makeRequest({ text: prefix + randomText(2000 + s, 30) }))).toBe(w);
      expect(p.select(workers, makeRequest({ text: prefix }))).toBe(w);
    }
    expect(ctx.branchCount('prefix_hash', 'ring_hit')).toBe(90);
  });

  it('spreads different prefixes over the workers', () => {
    const p = createPrefixHashPolicy(testParams(), makeContext());
    const workers = makeWorkers(4);
    const seen = new Map<string, number>();
    for (let s = 0; s < 400; s++) {
      const w = p.select(workers, makeRequest({ text: randomText(s, 300) }))!;
      seen.set(w.id, (seen.get(w.id) ?? 0) + 1);
    }
    for (const w of workers) expect(seen.get(w.id)!).toBeGreaterThan(50);
  });

  it('keys: tokens win over text; text shorter than a block is hashed whole; nothing ⇒ no key', () => {
    expect(prefixKey(makeRequest({ tokens: [1, 2, 3, 9], text: 'x' }), 3, 64)).toBe(
      prefixKey(makeRequest({ tokens: [1, 2, 3, 7] }), 3, 64),
    );
    expect(prefixKey(makeRequest({ tokens: [1, 2, 4] }), 3, 64)).not.toBe(
      prefixKey(makeRequest({ tokens: [1, 2, 3] }), 3, 64),
    );
    expect(prefixKey(makeRequest({ text: 'hello' }), 256, 64)).toBe('s:hello');
    expect(prefixKey(makeRequest({ text: '' }), 256, 64)).toBeUndefined();
    // depth min(#blocks, ceil(prefixTokenCount × 4 / blockChars)): 2 tokens ⇒ 8 chars ⇒ 1 block of 16
    const a = 'a'.repeat(16);
    expect(prefixKey(makeRequest({ text: a + 'xyz'.repeat(10) }), 2, 16)).toBe(
      prefixKey(makeRequest({ text: a + 'qrs'.repeat(10) }), 2, 16),
    );
  });

  it('same token prefix ⇒ same worker', () => {
    const p = createPrefixHashPolicy(testParams({ prefixTokenCount: 5 }), makeContext());
    const workers = makeWorkers(3);
    for (let i = 0; i < 20; i++) {
      const head = [i, i + 1, i + 2, i + 3, i + 4];
      expect(p.select(workers, makeRequest({ tokens: [...head, 100] }))).toBe(
        p.select(workers, makeRequest({ tokens: [...head, 999, 888] })),
      );
    }
  });

  it('bounded load walks away from an overloaded ring pick to the least-loaded acceptable worker', () => {
    const ctx = makeContext();
    const p = createPrefixHashPolicy(testParams(), ctx);
    const workers = makeWorkers(4);
    const text = randomText(77, 2000);
    const home = p.select(workers, makeRequest({ text }))!;
    for (let i = 0; i < 10; i++) ctx.load.acquire(home.id);
    const others = workers.filter((w) => w !== home);
    ctx.load.acquire(others[0].id);
    ctx.load.acquire(others[0].id);
    ctx.load.acquire(others[1].id);
    // total 13, n 4: limit (14 / 4) × 1.25 = 4.375; home has 10 ⇒ walk to the least loaded ok
    const w = p.select(workers, makeRequest({ text }))!;
    expect(w).toBe(others[2]);
    expect(ctx.branchCount('prefix_hash', 'load_balance_walk')).toBe(1);
    // once the load evens out it comes home again
    for (const o of others) for (let i = 0; i < 10; i++) ctx.load.acquire(o.id);
    expect(p.select(workers, makeRequest({ text }))).toBe(home);
  });

  it('no key ⇒ least loaded; no candidates ⇒ undefined', () => {
    const ctx = makeContext();
    const p = createPrefixHashPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    ctx.load.acquire('w0');
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    expect(ctx.branchCount('prefix_hash', 'fallback_least_load')).toBe(1);
    expect(p.select([], makeRequest({ text: 'abc' }))).toBeUndefined();
    expect(ctx.branchCount('prefix_hash', 'no_healthy_workers')).toBe(1);
  });

  it('never returns a non-candidate', () => {
    const p = createPrefixHashPolicy(testParams(), makeContext());
    const workers = makeWorkers(4);
    p.onWorkersChanged?.(workers);
    for (let s = 0; s < 100; s++) {
      const candidates = workers.filter((_, i) => (s >> i) & 1);
      const w = p.select(candidates, makeRequest({ text: randomText(s, 200) }));
      if (candidates.length === 0) expect(w).toBeUndefined();
      else expect(candidates).toContain(w);
    }
  });
});
