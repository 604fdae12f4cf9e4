import { describe, expect, it } from 'vitest';
import { createPowerOfTwoPolicy } from './power-of-two.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';

describe('power_of_two', () => {
  it('prefers the less loaded by in-flight requests', () => {
    const ctx = makeContext({ seed: 7 });
    const p = createPowerOfTwoPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    for (let i = 0; i < 5; i++) ctx.load.acquire('w0');
    for (let i = 0; i < 50; i++) expect(p.select(workers, makeRequest())!.id).toBe('w1');
  });

  it('never picks the most loaded of three and skews toward the least loaded', () => {
    const ctx = makeContext({ seed: 3 });
    const p = createPowerOfTwoPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    for (let i = 0; i < 10; i++) ctx.load.acquire('w2');
    for (let i = 0; i < 5; i++) ctx.load.acquire('w1');
    const counts: Record<string, number> = { w0: 0, w1: 0, w2: 0 };
    for (let i = 0; i < 3000; i++) counts[p.select(workers, makeRequest())!.id]++;
    expect(counts.w2).toBe(0);
    // w0 wins every pair it is drawn in (2 of 3 pairs), w1 only the pair {w1, w2}
    expect(counts.w0 / 3000).toBeGreaterThan(0.6);
    expect(counts.w1 / 3000).toBeGreaterThan(0.25);
  });

  it('uses the engine KV usage when both candidates report it', () => {
    const ctx = makeContext({ seed: 11 });
    const p = createPowerOfTwoPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    for (let i = 0; i < 5; i++) ctx.load.acquire('w1'); // in flight says w0, engine says w1
    ctx.setEngineLoad('w0', { tokenUsage: 0.9 });
    ctx.setEngineLoad('w1', { tokenUsage: 0.1 });
    for (let i = 0; i < 20; i++) expect(p.select(workers, makeRequest())!.id).toBe('w1');
  });

  it('handles zero and one candidate', () => {
    const p = createPowerOfTwoPolicy(testParams(), makeContext());
    const workers = makeWorkers(1);
    expect(p.select([], makeRequest())).toBeUndefined();
    expect(p.select(workers, makeRequest())).toBe(workers[0]);
  });
});
