import { describe, expect, it } from 'vitest';
import { createManualPolicy } from './manual.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';
import type { PolicyParams, RouteRequest } from './types.js';

const keyed = (key: string): RouteRequest => makeRequest({ headers: { 'x-smg-routing-key': key } });

function setup(params: Partial<PolicyParams> = {}, seed = 1) {
  const ctx = makeContext({ seed });
  const p = createManualPolicy(testParams(params), ctx);
  return { ctx, p, workers: makeWorkers(3) };
}

describe('manual', () => {
  it('is sticky: the first request places the key, later ones hit', () => {
    const { ctx, p, workers } = setup();
    const first = p.select(workers, keyed('user-1'))!;
    for (let i = 0; i < 10; i++) expect(p.select(workers, keyed('user-1'))).toBe(first);
    expect(ctx.branchCount('manual', 'vacant')).toBe(1);
    expect(ctx.branchCount('manual', 'occupied_hit')).toBe(10);
    expect(p.size()).toBe(1);
    expect(p.activeKeys(first.id)).toBe(1);
    expect(p.needsText).toBe(false);
  });

  it('keeps up to 2 candidates, oldest first, and fails over between them', () => {
    const { ctx, p, workers } = setup({ assignmentMode: 'min_load' });
    const [a, b, c] = workers;
    ctx.load.acquire('w1');
    ctx.load.acquire('w2');
    expect(p.select(workers, keyed('k'))).toBe(a); // min load
    // a unavailable: re-placed (b, as c is busier), remembered as the second candidate
    ctx.load.acquire('w2');
    expect(p.select([b, c], keyed('k'))).toBe(b);
    expect(ctx.branchCount('manual', 'occupied_miss')).toBe(1);
    expect(p.select(workers, keyed('k'))).toBe(a); // a is back: the oldest candidate wins
    expect(p.select([b, c], keyed('k'))).toBe(b); // and b is still remembered
    // neither available: c joins and a (the oldest) is dropped
    expect(p.select([c], keyed('k'))).toBe(c);
    expect(p.select(workers, keyed('k'))).toBe(b);
    expect(p.select([a, c], keyed('k'))).toBe(c);
    expect(p.activeKeys('w0')).toBe(0);
    expect(p.activeKeys('w1')).toBe(1);
    expect(p.activeKeys('w2')).toBe(1);
  });

  it('drops entries idle for maxIdleSecs or more on maintain()', () => {
    const { ctx, p, workers } = setup({ maxIdleSecs: 60 });
    p.select(workers, keyed('old'));
    ctx.advance(30_000);
    p.select(workers, keyed('young'));
    ctx.advance(29_999);
    p.maintain();
    expect(p.size()).toBe(2);
    ctx.advance(1);
    p.maintain();
    expect(p.size()).toBe(1);
    ctx.advance(30_000);
    p.maintain();
    expect(p.size()).toBe(0);
    for (const w of workers) expect(p.activeKeys(w.id)).toBe(0);
  });

  it('a hit refreshes the idle clock', () => {
    const { ctx, p, workers } = setup({ maxIdleSecs: 10 });
    p.select(workers, keyed('k'));
    for (let i = 0; i < 5; i++) {
      ctx.advance(9_000);
      p.select(workers, keyed('k'));
      p.maintain();
    }
    expect(p.size()).toBe(1);
  });

  it('random assignment spreads new keys', () => {
    const { p, workers } = setup({ assignmentMode: 'random' }, 9);
    const counts = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const w = p.select(workers, keyed(`k${i}`))!;
      counts.set(w.id, (counts.get(w.id) ?? 0) + 1);
    }
    for (const w of workers) expect(counts.get(w.id)!).toBeGreaterThan(70);
  });

  it('min_load assignment: fewest in flight, random among ties', () => {
    const { ctx, p, workers } = setup({ assignmentMode: 'min_load' }, 4);
    ctx.load.acquire('w0');
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) seen.add(p.select(workers, keyed(`k${i}`))!.id);
    expect([...seen].sort()).toEqual(['w1', 'w2']);
  });

  it('min_group assignment: fewest routing keys, so keys spread evenly', () => {
    const { p, workers } = setup({ assignmentMode: 'min_group' }, 4);
    for (let i = 0; i < 30; i++) p.select(workers, keyed(`k${i}`));
    for (const w of workers) expect(p.activeKeys(w.id)).toBe(10);
  });

  it('no or empty key: chosen without being stored; no candidates: undefined', () => {
    const { ctx, p, workers } = setup();
    expect(workers).toContain(p.select(workers, makeRequest()));
    expect(workers).toContain(p.select(workers, keyed('')));
    expect(p.size()).toBe(0);
    expect(ctx.branchCount('manual', 'no_routing_id')).toBe(2);
    expect(p.select([], keyed('k'))).toBeUndefined();
    expect(ctx.branchCount('manual', 'no_healthy_workers')).toBe(1);
    expect(p.size()).toBe(0);
  });
});
