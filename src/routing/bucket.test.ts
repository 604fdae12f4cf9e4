import { describe, expect, it } from 'vitest';
import { bandsFor, createBucketPolicy } from './bucket.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';
import type { PolicyParams } from './types.js';

function setup(params: Partial<PolicyParams> = {}, n = 2) {
  const ctx = makeContext();
  const p = createBucketPolicy(testParams(params), ctx);
  const workers = makeWorkers(n);
  p.onWorkersChanged?.(workers);
  const route = (chars: number, candidates = workers) =>
    p.select(candidates, makeRequest({ text: 'x'.repeat(chars) }))?.id;
  return { ctx, p, workers, route };
}

const NO_BALANCE = { balanceAbsThreshold: 1e12 };

describe('bucket', () => {
  it('splits short and long prompts across workers by the initial bands (0..4096 split evenly)', () => {
    const { p, route } = setup(NO_BALANCE);
    expect(p.needsText).toBe(true);
    for (let i = 0; i < 5; i++) {
      expect(route(100)).toBe('w0');
      expect(route(3000)).toBe('w1');
    }
    expect(route(2047)).toBe('w0');
    expect(route(2048)).toBe('w1');
    expect(route(1_000_000)).toBe('w1'); // the last band is open-ended
  });

  it('recomputes the bands every 5 s so each worker gets about half the characters', () => {
    const { ctx, route } = setup(NO_BALANCE);
    for (let c = 10; c <= 1000; c += 10) route(c); // everything lands in w0's initial band
    ctx.advance(5000);
    // equal character mass over lengths 10..1000 splits near 1000 / √2 ≈ 707
    expect(route(650)).toBe('w0');
    expect(route(760)).toBe('w1');
  });

  it('balances characters when one worker has taken far more (imbalance ⇒ fewest chars)', () => {
    const { route } = setup(); // CLI defaults: abs 64, rel 1.5
    expect(route(3000)).toBe('w1');
    // w1 has 3000 chars, w0 none: long prompts now go to w0 until it catches up
    expect(route(3000)).toBe('w0');
    expect(route(100)).toBe('w0'); // balanced again (|3000 − 3000| ≤ 64): by band
    const sent = new Map<string, number>();
    for (let i = 0; i < 200; i++) {
      const chars = i % 3 === 0 ? 3500 : 200;
      const w = route(chars)!;
      sent.set(w, (sent.get(w) ?? 0) + chars);
    }
    // bands decide while max ≤ 1.5 × min (the relative threshold), balancing beyond that
    const [a, b] = [sent.get('w0')!, sent.get('w1')!];
    expect(Math.max(a, b) / Math.min(a, b)).toBeLessThan(1.6);
  });

  it('forgets requests older than the 5 s window', () => {
    const { ctx, route } = setup();
    expect(route(3000)).toBe('w1');
    ctx.advance(5001);
    expect(route(3000)).toBe('w1'); // w1's earlier 3000 chars expired: balanced, by band
  });

  it('never returns a non-candidate; a band of an unavailable worker falls back to a candidate', () => {
    const { route, workers } = setup(NO_BALANCE, 3);
    for (let i = 0; i < 20; i++) expect(route(4000, workers.slice(0, 2))).not.toBe('w2');
    expect(route(10, [])).toBeUndefined();
  });

  it('adopts candidates it has not seen', () => {
    const ctx = makeContext();
    const p = createBucketPolicy(testParams(NO_BALANCE), ctx);
    const workers = makeWorkers(2);
    expect(p.select(workers, makeRequest({ text: 'x'.repeat(3000) }))!.id).toBe('w1');
    const three = makeWorkers(3);
    ctx.advance(6000); // window empty: the bands are re-split evenly over three
    expect(p.select(three, makeRequest({ text: 'x'.repeat(3000) }))!.id).toBe('w2');
  });
});

describe('bandsFor', () => {
  it('covers 0..∞ without overlap, even for equal or missing lengths', () => {
    for (const lengths of [[], [5], [34, 34, 34], [5, 10, 15, 20, 24, 26], [1, 1000, 1000, 1000]]) {
      const bands = bandsFor(['a', 'b', 'c'], lengths);
      expect(bands.map((b) => b.url)).toEqual(['a', 'b', 'c']);
      expect(bands[0].lo).toBe(0);
      expect(bands[2].hi).toBe(Infinity);
      for (let i = 1; i < bands.length; i++) expect(bands[i].lo).toBe(bands[i - 1].hi + 1);
      for (const b of bands) expect(b.hi).toBeGreaterThanOrEqual(b.lo);
    }
    expect(bandsFor([], [1, 2])).toEqual([]);
  });

  it('puts about total / n characters in each band', () => {
    // 5+10+15 = 30 | 20+24 = 44 | 26 (targets 33.3 / 66.7)
    expect(bandsFor(['a', 'b', 'c'], [5, 10, 15, 20, 24, 26]).map((b) => b.hi)).toEqual([15, 24, Infinity]);
  });
});
