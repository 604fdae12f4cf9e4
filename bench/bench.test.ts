/**
 * Smoke test of the routing micro-benchmark's core (in-process, tiny sizes, no child processes):
 * the result has the documented shape, every policy routed every request, and the numbers are sane.
 */
import { describe, expect, it } from 'vitest';
import { POLICY_NAMES } from '../src/routing/types.js';
import { distribution, percentileSorted } from './common.js';
import { runRoutingCore } from './routing.js';

describe('bench helpers', () => {
  it('computes nearest-rank percentiles', () => {
    const sorted = Float64Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentileSorted(sorted, 50)).toBe(50);
    expect(percentileSorted(sorted, 99)).toBe(99);
    expect(percentileSorted(sorted, 100)).toBe(100);
    expect(Number.isNaN(percentileSorted(new Float64Array(0), 50))).toBe(true);
    const d = distribution([3, 1, 2]);
    expect(d).toMatchObject({ count: 3, p50: 2, max: 3, mean: 2 });
  });
});

describe('routing benchmark core', () => {
  it('routes every request with every policy and reports timings', async () => {
    const calls = 500;
    const warmup = 100;
    const r = await runRoutingCore({ workerCounts: [8], indexBlocks: 5_000, calls, warmup, seed: 3 });

    expect(r.params.policies).toEqual([...POLICY_NAMES]);
    expect(r.requests.total).toBe(calls + warmup);
    expect(r.requests.followUps).toBeGreaterThan(0);
    expect(r.requests.meanChars).toBeGreaterThanOrEqual(1024);
    expect(r.requests.meanChars).toBeLessThanOrEqual(4096);
    expect(r.byWorkers).toHaveLength(1);

    const b = r.byWorkers[0];
    expect(b.workers).toBe(8);
    expect(b.indexBlocks).toBeGreaterThanOrEqual(5_000);
    expect(b.indexBlocksAfter).toBeGreaterThanOrEqual(b.indexBlocks);
    expect(b.policies.map((p) => p.policy)).toEqual([...POLICY_NAMES]);
    for (const p of b.policies) {
      expect(p.unrouted, p.policy).toBe(0);
      expect(p.routed, p.policy).toBe(calls + warmup);
      expect(p.calls).toBe(calls);
      for (const v of [p.p50Us, p.p90Us, p.p99Us, p.maxUs, p.meanUs]) {
        expect(Number.isFinite(v), p.policy).toBe(true);
        expect(v).toBeGreaterThanOrEqual(0);
      }
      expect(p.p50Us).toBeLessThanOrEqual(p.p99Us);
      expect(p.p99Us).toBeLessThanOrEqual(p.maxUs);
      expect(p.withinBudget).toBe(p.p99Us <= 20);
      expect(p.gcPauses).toBeGreaterThanOrEqual(0);
      // passthrough always takes the first candidate; the others spread over several workers
      if (p.policy === 'passthrough') expect(p.distinctWorkers).toBe(1);
      else expect(p.distinctWorkers, p.policy).toBeGreaterThan(1);
    }
    const ca = b.policies.find((p) => p.policy === 'cache_aware');
    // half the requests extend an indexed conversation: cache_aware must find most of them
    expect(ca?.cacheHits).toBeGreaterThan(calls / 4);
    expect(ca?.blocksRecorded).toBeGreaterThan(0);
    expect(b.worstP99Us).toBe(Math.max(...b.policies.map((p) => p.p99Us)));
    expect(r.allWithinBudget).toBe(b.policies.every((p) => p.withinBudget));
  });
});
