import { describe, expect, it } from 'vitest';
import { createRoundRobinPolicy } from './round-robin.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';

describe('round_robin', () => {
  it('cycles through the candidates in order', () => {
    const p = createRoundRobinPolicy(testParams(), makeContext());
    const workers = makeWorkers(3);
    const picks = Array.from({ length: 7 }, () => p.select(workers, makeRequest())!.id);
    expect(picks).toEqual(['w0', 'w1', 'w2', 'w0', 'w1', 'w2', 'w0']);
  });

  it('keeps one counter per instance and adapts to a changing candidate list', () => {
    const ctx = makeContext();
    const a = createRoundRobinPolicy(testParams(), ctx);
    const b = createRoundRobinPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    expect(a.select(workers, makeRequest())!.id).toBe('w0');
    expect(b.select(workers, makeRequest())!.id).toBe('w0');
    expect(a.select(workers.slice(0, 1), makeRequest())!.id).toBe('w0');
    expect(a.select([], makeRequest())).toBeUndefined();
  });
});
