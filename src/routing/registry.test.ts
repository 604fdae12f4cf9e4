import { describe, expect, it } from 'vitest';
import { ManualPolicy } from './manual.js';
import { PolicyRegistry, type PolicyChoice } from './registry.js';
import { makeContext, makeRequest, makeWorker, makeWorkers, testParams } from './testing.js';
import type { PolicyName, PolicyParams } from './types.js';

function setup(
  defaultPolicy: PolicyName = 'cache_aware',
  routingKeyOverride = false,
  params: Partial<PolicyParams> = {},
) {
  const ctx = makeContext({ blockChars: 16 });
  const reg = new PolicyRegistry({ defaultPolicy, params: testParams(params), ctx, routingKeyOverride });
  return { ctx, reg };
}

const labelled = (labels: Record<string, string>[]) =>
  labels.map((l, i) => makeWorker(`w${i}`, `http://w${i}:8000`, { labels: l }));

describe('PolicyRegistry', () => {
  it('creates one instance per model lazily, with the default policy', () => {
    const { reg } = setup('round_robin');
    const workers = makeWorkers(2);
    expect(reg.names()).toEqual([]);
    expect(reg.select('b', workers, makeRequest())!.id).toBe('w0');
    expect(reg.select('a', workers, makeRequest())!.id).toBe('w0'); // its own counter
    expect(reg.select('b', workers, makeRequest())!.id).toBe('w1');
    expect(reg.select('', workers, makeRequest())!.id).toBe('w0');
    expect(reg.names()).toEqual([
      { model: '', policy: 'round_robin' },
      { model: 'a', policy: 'round_robin' },
      { model: 'b', policy: 'round_robin' },
    ]);
    expect(reg.policyFor('a', workers)).toBe(reg.policyFor('a', workers));
  });

  it('no candidates and no instance: undefined, nothing created', () => {
    const { reg } = setup();
    expect(reg.select('m', [], makeRequest())).toBeUndefined();
    expect(reg.needsText('m', [])).toBe(false);
    expect(reg.names()).toEqual([]);
  });

  it('the worker label policy=<name> overrides the default; the first by URL wins; unknown ignored', () => {
    const { reg } = setup();
    expect(reg.policyFor('m', labelled([{}, { policy: 'round_robin' }])).name).toBe('round_robin');
    const { reg: r2 } = setup();
    const ws = labelled([{ policy: 'random' }, { policy: 'manual' }]);
    expect(r2.policyFor('m', [ws[1], ws[0]]).name).toBe('random');
    const { reg: r3 } = setup();
    expect(r3.policyFor('m', labelled([{ policy: 'bogus' }, {}])).name).toBe('cache_aware');
    expect(r3.policyFor('n', labelled([{ policy: 'bogus' }, { policy: 'bucket' }])).name).toBe('bucket');
  });

  it('replaces the instance when the label changes, keeps it otherwise, drops it when workers go', () => {
    const { reg } = setup();
    const plain = makeWorkers(2);
    const first = reg.policyFor('m', plain);
    expect(first.name).toBe('cache_aware');
    reg.workersChanged('m', [...plain, makeWorker('w9', 'http://w9:8000')]);
    expect(reg.policyFor('m', plain)).toBe(first);

    const relabelled = labelled([{ policy: 'power_of_two' }, {}]);
    reg.workersChanged('m', relabelled);
    expect(reg.names()).toEqual([{ model: 'm', policy: 'power_of_two' }]);
    const second = reg.policyFor('m', relabelled);
    expect(second).not.toBe(first);
    expect(reg.needsText('m', relabelled)).toBe(false);

    reg.workersChanged('m', plain); // label removed: back to the default, a fresh instance
    expect(reg.policyFor('m', plain).name).toBe('cache_aware');
    expect(reg.policyFor('m', plain)).not.toBe(first);

    reg.workersChanged('m', []);
    expect(reg.names()).toEqual([]);
    reg.workersChanged('unknown', plain); // no instance yet: nothing to do
    expect(reg.names()).toEqual([]);
  });

  it('a labelled worker going unhealthy does not flip the policy in select', () => {
    const { reg } = setup();
    const ws = labelled([{ policy: 'round_robin' }, {}, {}]);
    expect(reg.policyFor('m', ws).name).toBe('round_robin');
    const candidates = ws.slice(1);
    expect(reg.select('m', candidates, makeRequest())!.id).toBe('w1');
    expect(reg.select('m', candidates, makeRequest())!.id).toBe('w2');
    expect(reg.names()).toEqual([{ model: 'm', policy: 'round_robin' }]);
  });

  it('forwards worker changes to the instance (consistent_hashing rebuilds its ring)', () => {
    const { reg } = setup('consistent_hashing');
    const ws = makeWorkers(4);
    const req = makeRequest({ headers: { 'x-smg-routing-key': 'k' } });
    const home = reg.select('m', ws, req)!;
    const rest = ws.filter((w) => w !== home);
    reg.workersChanged('m', rest);
    expect(rest).toContain(reg.select('m', rest, req));
  });

  it('routing-key override: a shared manual instance decides for other policies', () => {
    const { ctx, reg } = setup('round_robin', true);
    const ws = makeWorkers(3);
    const keyed = (k: string) => makeRequest({ headers: { 'x-smg-routing-key': k } });
    const first = reg.select('m', ws, keyed('sess'))!;
    for (let i = 0; i < 5; i++) expect(reg.select('m', ws, keyed('sess'))).toBe(first);
    expect(reg.select('other', ws, keyed('sess'))).toBe(first); // one instance across models
    expect(ctx.branchCount('manual', 'vacant')).toBe(1);
    expect(ctx.branchCount('manual', 'occupied_hit')).toBe(6);
    expect(reg.manualEntries()).toBe(1);
    // without the header the model's own policy decides
    expect(reg.select('m', ws, makeRequest())!.id).toBe('w0');
    expect(reg.select('m', ws, makeRequest())!.id).toBe('w1');
  });

  it('routing-key override leaves manual and consistent_hashing to themselves, and is off by default', () => {
    const keyed = makeRequest({ headers: { 'x-smg-routing-key': 'sess' } });
    const ws = makeWorkers(3);
    const ch = setup('consistent_hashing', true);
    ch.reg.select('m', ws, keyed);
    expect(ch.ctx.branchCount('consistent_hashing', 'routing_key_hit')).toBe(1);
    expect(ch.ctx.branchCount('manual', 'vacant')).toBe(0);

    const man = setup('manual', true);
    man.reg.select('m', ws, keyed);
    expect(man.reg.policyFor('m', ws)).toBeInstanceOf(ManualPolicy);
    expect((man.reg.policyFor('m', ws) as ManualPolicy).size()).toBe(1);
    expect(man.reg.manualEntries()).toBe(1);

    const off = setup('round_robin', false);
    expect(off.reg.select('m', ws, keyed)!.id).toBe('w0');
    expect(off.reg.select('m', ws, keyed)!.id).toBe('w1');
    expect(off.ctx.branchCount('manual', 'vacant')).toBe(0);
  });

  it('needsText follows the policy', () => {
    const { reg } = setup('cache_aware');
    expect(reg.needsText('a', makeWorkers(1))).toBe(true);
    expect(reg.needsText('b', labelled([{ policy: 'manual' }]))).toBe(false);
    expect(reg.needsText('c', labelled([{ policy: 'prefix_hash' }]))).toBe(true);
  });

  it('maintain() sweeps manual maps and evicts the prefix index once', () => {
    const ctx = makeContext({ blockChars: 16, maxBlocksPerWorker: 2 });
    const reg = new PolicyRegistry({
      defaultPolicy: 'cache_aware',
      params: testParams({ maxIdleSecs: 10 }),
      ctx,
      routingKeyOverride: true,
    });
    const ws = makeWorkers(2);
    reg.select('m', ws, makeRequest({ text: 'a'.repeat(160) }));
    reg.select('m', ws, makeRequest({ headers: { 'x-smg-routing-key': 'k' } }));
    expect(ctx.cache.heldBy('m', 'w0')).toBe(10);
    expect(reg.manualEntries()).toBe(1);
    ctx.advance(10_000);
    reg.maintain();
    expect(ctx.cache.heldBy('m', 'w0')).toBeLessThanOrEqual(2);
    expect(reg.manualEntries()).toBe(0);
  });

  it('a model policy set cluster-wide routes with its own parameters; new parameters replace the instance', () => {
    const ctx = makeContext({ blockChars: 16 });
    let choice: PolicyChoice | undefined = {
      name: 'cache_aware',
      params: testParams({ cacheThreshold: 0.02 }),
    };
    const reg = new PolicyRegistry({
      defaultPolicy: 'cache_aware',
      params: testParams(),
      ctx,
      routingKeyOverride: false,
      modelPolicy: (model) => (model === 'm' ? choice : undefined),
    });
    const workers = makeWorkers(2);
    const long = 'p'.repeat(16 * 100);
    // a prompt whose first 10 of ~100 blocks are another prompt's: a 10 % match
    const probe = (i: number) =>
      makeRequest({ model: 'm', text: long.slice(0, 160) + `${i}`.repeat(16 * 90) });
    const first = reg.policyFor('m', workers);
    expect(reg.select('m', workers, makeRequest({ model: 'm', text: long }))!.id).toBe('w0');
    // over the model's threshold (0.02): to the holder; the global 0.3 would send it to the emptier w1
    expect(reg.select('m', workers, probe(1))!.id).toBe('w0');
    expect(reg.policyFor('m', workers)).toBe(first);
    choice = { name: 'cache_aware', params: testParams({ cacheThreshold: 0.3 }) };
    reg.workersChanged('m', workers);
    expect(reg.policyFor('m', workers)).not.toBe(first);
    expect(reg.select('m', workers, probe(2))!.id).toBe('w1');
    expect(reg.describe('m')).toEqual({ policy: 'cache_aware', source: 'mesh' });
    choice = undefined;
    reg.workersChanged('m', workers);
    expect(reg.describe('m')).toEqual({ policy: 'cache_aware', source: 'default' });
  });
});
