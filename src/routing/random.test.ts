import { describe, expect, it } from 'vitest';
import { createRandomPolicy } from './random.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';

describe('random', () => {
  it('spreads roughly uniformly', () => {
    const ctx = makeContext({ seed: 42 });
    const p = createRandomPolicy(testParams(), ctx);
    const workers = makeWorkers(4);
    const counts = new Map<string, number>();
    for (let i = 0; i < 8000; i++) {
      const w = p.select(workers, makeRequest());
      counts.set(w!.id, (counts.get(w!.id) ?? 0) + 1);
    }
    for (const w of workers) expect(counts.get(w.id)).toBeGreaterThan(1800);
    for (const w of workers) expect(counts.get(w.id)).toBeLessThan(2200);
  });

  it('returns undefined for no candidates and survives a PRNG returning 1', () => {
    const ctx = { ...makeContext(), random: () => 1 };
    const p = createRandomPolicy(testParams(), ctx);
    expect(p.select([], makeRequest())).toBeUndefined();
    const workers = makeWorkers(3);
    expect(p.select(workers, makeRequest())).toBe(workers[2]);
    expect(p.needsText).toBe(false);
  });
});
