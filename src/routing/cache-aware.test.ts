import { describe, expect, it } from 'vitest';
import { blockHashes } from '../state/block-hash.js';
import { createCacheAwarePolicy } from './cache-aware.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';
import type { PolicyParams } from './types.js';

const BC = 16;

function setup(params: Partial<PolicyParams> = {}, maxBlocksPerWorker?: number) {
  const ctx = makeContext({ blockChars: BC, maxBlocksPerWorker });
  const policy = createCacheAwarePolicy(testParams(params), ctx);
  const workers = makeWorkers(3);
  const route = (text: string, candidates = workers) => policy.select(candidates, makeRequest({ text }))?.id;
  return { ctx, policy, workers, route };
}

function load(ctx: ReturnType<typeof makeContext>, id: string, n: number): void {
  for (let i = 0; i < n; i++) ctx.load.acquire(id);
}

const SYSTEM = 'You are a helpful assistant. '.repeat(8); // 232 chars

describe('cache_aware', () => {
  it('needs the text', () => {
    expect(setup().policy.needsText).toBe(true);
  });

  it('a hit stays on the worker that holds the prefix, even when it is a little busier', () => {
    const { ctx, route } = setup();
    expect(route(SYSTEM + 'first question')).toBe('w0');
    load(ctx, 'w0', 5);
    expect(route(SYSTEM + 'first question and a follow-up')).toBe('w0');
    expect(route(SYSTEM + 'another question')).toBe('w0');
  });

  it('a miss goes to the least loaded worker', () => {
    const { ctx, route } = setup();
    load(ctx, 'w0', 2);
    load(ctx, 'w2', 1);
    expect(route('a completely new prompt with nothing cached anywhere')).toBe('w1');
  });

  it('a miss among equally loaded workers goes to the one holding the least cache', () => {
    const { route } = setup();
    expect(route('x'.repeat(160))).toBe('w0'); // all empty: order decides
    expect(route('y'.repeat(64))).toBe('w1'); // w0 holds 10 blocks now
    expect(route('z'.repeat(32))).toBe('w2');
    expect(route('v'.repeat(16))).toBe('w2'); // w2 holds 2 blocks, w1 4, w0 10
  });

  it('a match at or below the threshold is a miss', () => {
    const { ctx, route } = setup();
    expect(route('p'.repeat(48))).toBe('w0');
    load(ctx, 'w0', 1);
    // 3 of 10 blocks match: 48 / 160 = 0.3, not > 0.3
    expect(route('p'.repeat(48) + 'q'.repeat(112))).toBe('w1');
    // 4 blocks of w1's 10 match: 64 / 160 = 0.4
    expect(route('p'.repeat(48) + 'q'.repeat(16) + 'r'.repeat(96))).toBe('w1');
  });

  it('ties on depth go to the worker with fewer in flight', () => {
    const { ctx, policy, workers } = setup();
    const text = SYSTEM + 'shared';
    const hashes = blockHashes(text, BC);
    ctx.recordCache('m', 'w0', hashes, 0);
    ctx.recordCache('m', 'w2', hashes, 0);
    load(ctx, 'w0', 3);
    load(ctx, 'w2', 1);
    expect(policy.select(workers, makeRequest({ text }))!.id).toBe('w2');
  });

  it('in-flight imbalance overrides the cache, and the new holder is recorded', () => {
    const { ctx, route } = setup();
    const text = SYSTEM + 'question';
    expect(route(text)).toBe('w0');
    load(ctx, 'w0', 100);
    load(ctx, 'w1', 10);
    load(ctx, 'w2', 20);
    expect(route(text)).toBe('w1');
    const m = ctx.cache.match('m', blockHashes(text, BC));
    expect(m.depths.get('w1')).toBe(blockHashes(text, BC).length);
  });

  it('engine KV usage triggers the override when configured', () => {
    const { ctx, route } = setup({ overloadTokenUsageThreshold: 0.8 });
    const text = SYSTEM + 'question';
    expect(route(text)).toBe('w0');
    load(ctx, 'w0', 1);
    ctx.setEngineLoad('w0', { tokenUsage: 0.9 });
    ctx.setEngineLoad('w1', { tokenUsage: 0.5 });
    expect(route(text)).toBe('w0'); // w2 has no report: the KV trigger needs every candidate's
    ctx.setEngineLoad('w2', { tokenUsage: 0.5 });
    expect(route(text)).toBe('w1');
  });

  it('KV usage spread triggers the override', () => {
    const { ctx, route } = setup({ balanceTokenUsageThreshold: 0.3 });
    const text = SYSTEM + 'question';
    expect(route(text)).toBe('w0');
    ctx.setEngineLoad('w0', { tokenUsage: 0.7 });
    ctx.setEngineLoad('w1', { tokenUsage: 0.3 });
    ctx.setEngineLoad('w2', { tokenUsage: 0.3 });
    // the override goes to the fewest in flight (as SMG), not to the lowest KV usage
    load(ctx, 'w0', 2);
    load(ctx, 'w1', 1);
    expect(route(text)).toBe('w2');
  });

  it('records only the blocks the chosen worker did not hold, anchored at the deepest it had', () => {
    const { ctx, route } = setup();
    const t1 = 'a'.repeat(10 * BC);
    const t2 = t1 + 'b'.repeat(5 * BC + 3);
    expect(route(t1)).toBe('w0');
    expect(ctx.cacheEvents).toHaveLength(1);
    expect(ctx.cacheEvents[0].anchor).toBe(0);
    expect(ctx.cacheEvents[0].hashes).toHaveLength(10);
    expect(route(t2)).toBe('w0');
    const h2 = blockHashes(t2, BC);
    const ev = ctx.cacheEvents[1];
    expect(ev.worker).toBe('w0');
    expect(ev.anchor).toBe(h2[9]);
    expect(ev.hashes).toEqual(h2.slice(10));
    // a full hit only refreshes the deepest block's recency
    expect(route(t2)).toBe('w0');
    expect(ctx.cacheEvents[2].anchor).toBe(h2[14]);
    expect(ctx.cacheEvents[2].hashes).toEqual([]);
  });

  it('records nothing for text shorter than a block, and routes it by load', () => {
    const { ctx, route } = setup();
    load(ctx, 'w0', 1);
    expect(route('')).toBe('w1');
    expect(route('short')).toBe('w1');
    expect(ctx.cacheEvents).toHaveLength(0);
  });

  it('never picks a worker that is not a candidate, even if it holds the prefix', () => {
    const { workers, route } = setup();
    const text = SYSTEM + 'question';
    expect(route(text)).toBe('w0');
    for (let i = 0; i < 10; i++) expect(['w1', 'w2']).toContain(route(text, workers.slice(1)));
    expect(route(text, [])).toBeUndefined();
  });

  it('when the deepest holder is not a candidate, the next deepest candidate wins', () => {
    const { ctx, policy, workers } = setup();
    const text = 'k'.repeat(10 * BC);
    const h = blockHashes(text, BC);
    ctx.recordCache('m', 'w0', h, 0); // all 10 blocks
    ctx.recordCache('m', 'w1', h.slice(0, 6), 0); // the first 6
    load(ctx, 'w2', 0);
    const chosen = policy.select([workers[1], workers[2]], makeRequest({ text }));
    expect(chosen?.id).toBe('w1');
    // w1 held 6 blocks: only the other 4 are recorded, anchored at block 5
    const ev = ctx.cacheEvents[ctx.cacheEvents.length - 1];
    expect(ev.worker).toBe('w1');
    expect(ev.anchor).toBe(h[5]);
    expect(ev.hashes).toEqual(h.slice(6));
  });

  it('a worker chosen by load records from its own depth, not the deepest holder’s', () => {
    const { ctx, route } = setup();
    const text = 'j'.repeat(10 * BC);
    const h = blockHashes(text, BC);
    ctx.recordCache('m', 'w0', h, 0);
    ctx.recordCache('m', 'w1', h.slice(0, 3), 0);
    load(ctx, 'w0', 100);
    load(ctx, 'w2', 10);
    expect(route(text)).toBe('w1'); // imbalanced: the least loaded
    const ev = ctx.cacheEvents[ctx.cacheEvents.length - 1];
    expect(ev.anchor).toBe(h[2]);
    expect(ev.hashes).toEqual(h.slice(3));
    // still imbalanced: w1 again, which holds the first 2 blocks of this prompt
    const text2 = 'j'.repeat(2 * BC) + 'i'.repeat(8 * BC);
    const h2 = blockHashes(text2, BC);
    expect(route(text2)).toBe('w1');
    const ev2 = ctx.cacheEvents[ctx.cacheEvents.length - 1];
    expect(ev2.anchor).toBe(h2[1]);
    expect(ev2.hashes).toEqual(h2.slice(2));
  });

  it('keys the index by model', () => {
    const { ctx, policy, workers } = setup();
    const text = SYSTEM + 'question';
    expect(policy.select(workers, makeRequest({ model: 'a', text }))!.id).toBe('w0');
    load(ctx, 'w0', 1);
    expect(policy.select(workers, makeRequest({ model: 'b', text }))!.id).toBe('w1');
    expect(policy.select(workers, makeRequest({ model: 'a', text }))!.id).toBe('w0');
  });

  it('maintain() evicts down to the per-worker budget', () => {
    const { ctx, policy, route } = setup({}, 4);
    route('a'.repeat(10 * BC));
    expect(ctx.cache.heldBy('m', 'w0')).toBe(10);
    policy.maintain?.();
    expect(ctx.cache.heldBy('m', 'w0')).toBeLessThanOrEqual(4);
  });
});
