import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { WorkerHealthEvent } from './events.js';
import { WorkerRegistry } from './registry.js';
import type { WorkerStatus } from './worker.js';
import { testWorkerSpec } from '../testing/worker-spec.js';

const hlc = (wall: number, node: string) => ({ wall, counter: 0, node });
const health = (status: WorkerStatus, wall: number, node: string): WorkerHealthEvent => ({
  kind: 'worker.health',
  id: 'w',
  status,
  hlc: hlc(wall, node),
});

function registry(probers: string[] | undefined = ['p1', 'p2']): WorkerRegistry {
  const r = new WorkerRegistry();
  r.applyUpsert({ kind: 'worker.upsert', id: 'w', spec: testWorkerSpec('http://w:1'), hlc: hlc(1, 'x') });
  if (probers) r.setHealthJudge((_id, node) => probers.includes(node));
  return r;
}

describe('worker health judged over its probers', () => {
  it("one prober's failures never take the worker out while the other sees it ready", () => {
    const r = registry();
    r.applyHealth(health('ready', 10, 'p1'));
    r.applyHealth(health('ready', 11, 'p2'));
    r.applyHealth(health('not_ready', 20, 'p1'));
    expect(r.get('w')?.routable).toBe(true);
    r.applyHealth(health('not_ready', 21, 'p2'));
    expect(r.get('w')?.status).toBe('not_ready');
    r.applyHealth(health('ready', 30, 'p2'));
    expect(r.get('w')?.status).toBe('ready');
  });

  it("a non-prober's word does not count while a prober has spoken; draining counts from anyone", () => {
    const r = registry();
    r.applyHealth(health('ready', 10, 'p1'));
    r.applyHealth(health('not_ready', 20, 'outsider'));
    expect(r.get('w')?.status).toBe('ready');
    r.applyHealth(health('draining', 25, 'outsider'));
    expect(r.get('w')?.status).toBe('draining');
  });

  it('with no prober heard yet (membership just changed), the latest word of anyone decides', () => {
    const r = registry(['p3', 'p4']);
    r.applyHealth(health('ready', 10, 'p1'));
    r.applyHealth(health('not_ready', 20, 'p2'));
    expect(r.get('w')?.status).toBe('not_ready');
    r.applyHealth(health('ready', 30, 'p3'));
    expect(r.get('w')?.status).toBe('ready');
  });

  it('rejudges when the probers change', () => {
    let probers = ['p1', 'p2'];
    const r = new WorkerRegistry();
    r.applyUpsert({ kind: 'worker.upsert', id: 'w', spec: testWorkerSpec('http://w:1'), hlc: hlc(1, 'x') });
    r.setHealthJudge((_id, node) => probers.includes(node));
    r.applyHealth(health('ready', 10, 'p1'));
    r.applyHealth(health('not_ready', 20, 'p3'));
    expect(r.get('w')?.status).toBe('ready');
    probers = ['p3', 'p2'];
    r.rejudge();
    expect(r.get('w')?.status).toBe('not_ready');
  });

  it('any order and duplication of observations gives the same state and verdict (property)', () => {
    const statuses: WorkerStatus[] = ['pending', 'ready', 'not_ready', 'failed'];
    const ev = fc
      .record({
        status: fc.constantFrom(...statuses),
        wall: fc.integer({ min: 1, max: 50 }),
        node: fc.constantFrom('p1', 'p2', 'p3'),
      })
      .map((e) => health(e.status, e.wall, e.node));
    fc.assert(
      // an HLC is unique per node: one observation per (node, time)
      fc.property(
        fc.uniqueArray(ev, { maxLength: 20, selector: (e) => `${e.hlc.node}:${e.hlc.wall}` }),
        fc.func(fc.integer()),
        (events, key) => {
          const a = registry();
          const b = registry();
          for (const e of events) a.applyHealth(e);
          const shuffled = [...events, ...events].sort((x, y) => key(x) - key(y));
          for (const e of shuffled) b.applyHealth(e);
          expect(b.exportState()).toEqual(a.exportState());
          expect(b.get('w')?.status).toBe(a.get('w')?.status);
        },
      ),
      { numRuns: 300 },
    );
  });
});
