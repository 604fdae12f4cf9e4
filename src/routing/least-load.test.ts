import { describe, expect, it } from 'vitest';
import { createLeastLoadPolicy } from './least-load.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';

describe('least_load', () => {
  it('fleet dark: join-shortest-queue on in-flight, ties → earliest', () => {
    const ctx = makeContext();
    const p = createLeastLoadPolicy(testParams(), ctx);
    const workers = makeWorkers(3);
    expect(p.select(workers, makeRequest())!.id).toBe('w0');
    ctx.load.acquire('w0');
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    ctx.load.acquire('w1');
    ctx.load.acquire('w1');
    expect(p.select(workers, makeRequest())!.id).toBe('w2');
    ctx.load.acquire('w2');
    expect(p.select(workers, makeRequest())!.id).toBe('w0');
  });

  it('with engine loads: queued token work and the KV barrier decide', () => {
    const ctx = makeContext();
    const p = createLeastLoadPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    ctx.setEngineLoad('w0', { numWaitingUncachedTokens: 4000, tokenUsage: 0.1 });
    ctx.setEngineLoad('w1', { numWaitingUncachedTokens: 0, tokenUsage: 0.1 });
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    // a near-full KV cache costs more than the queue: 0.15 * 0.99 / 0.01 ≈ 14.85 s vs 2 s
    ctx.setEngineLoad('w1', { numWaitingUncachedTokens: 0, tokenUsage: 0.99 });
    expect(p.select(workers, makeRequest())!.id).toBe('w0');
  });

  it('credits dispatched token work until the next report, then resets it', () => {
    const ctx = makeContext();
    const p = createLeastLoadPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    ctx.setEngineLoad('w0', { tokenUsage: 0.2 });
    ctx.setEngineLoad('w1', { tokenUsage: 0.2 });
    // equal reports: the per-dispatch credit (1024 tokens each, mean prefill) water-fills
    const picks = Array.from({ length: 6 }, () => p.select(workers, makeRequest())!.id);
    expect(picks).toEqual(['w0', 'w1', 'w0', 'w1', 'w0', 'w1']);
    // text length / 4 when there is text
    expect(p.select(workers, makeRequest({ text: 'x'.repeat(40_000) }))!.id).toBe('w0'); // +10000
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    // a fresh report for w0 resets its credit
    ctx.setEngineLoad('w0', { tokenUsage: 0.2 });
    expect(p.select(workers, makeRequest())!.id).toBe('w0');
  });

  it('a worker without a report while others report is scored from in-flight × mean prefill', () => {
    const ctx = makeContext();
    const p = createLeastLoadPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    ctx.setEngineLoad('w0', { numWaitingUncachedTokens: 3000, genThroughput: 1000 }); // 3 s
    ctx.load.acquire('w1');
    ctx.load.acquire('w1'); // 2 × 1024 / 1000 ≈ 2.05 s
    expect(p.select(workers, makeRequest())!.id).toBe('w1');
    ctx.load.acquire('w1'); // ≈ 3.07 s
    expect(p.select(workers, makeRequest())!.id).toBe('w0');
  });

  it('uses token ids when present and handles no candidates', () => {
    const ctx = makeContext();
    const p = createLeastLoadPolicy(testParams(), ctx);
    const workers = makeWorkers(2);
    ctx.setEngineLoad('w0', {});
    ctx.setEngineLoad('w1', {});
    expect(p.select(workers, makeRequest({ tokens: new Array(5000).fill(1) }))!.id).toBe('w0');
    expect(p.select(workers, makeRequest({ tokens: [1, 2] }))!.id).toBe('w1');
    expect(p.select(workers, makeRequest({ tokens: [1, 2] }))!.id).toBe('w1');
    expect(p.select([], makeRequest())).toBeUndefined();
    p.onWorkersChanged?.(workers.slice(1));
  });
});
