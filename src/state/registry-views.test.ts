/**
 * The registry's read views: updated one worker at a time, lists rebuilt lazily on the first read
 * after a change. Whatever the order of reads and writes, they equal the views of a registry that
 * received the same events and was read only at the end.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { StateEvent } from './events.js';
import { WorkerRegistry } from './registry.js';
import type { WorkerStatus } from './worker.js';
import { testWorkerSpec } from '../testing/worker-spec.js';

const hlc = (wall: number, node = 'n') => ({ wall, counter: 0, node });

function apply(r: WorkerRegistry, ev: StateEvent): void {
  if (ev.kind === 'worker.upsert') r.applyUpsert(ev);
  else if (ev.kind === 'worker.remove') r.applyRemove(ev);
  else if (ev.kind === 'worker.health') r.applyHealth(ev);
}

function views(r: WorkerRegistry) {
  const ids = (xs: readonly { id: string }[]) => xs.map((w) => w.id);
  const models = r.models();
  return {
    list: r.list().map((w) => [w.id, w.url, w.status, w.routable]),
    routable: ids(r.routable()),
    models,
    byModel: models.map((m) => [ids(r.forModel(m)), ids(r.routable(m))]),
    unknownModel: [ids(r.forModel('nope')), ids(r.routable('nope'))],
    byUrl: r.list().map((w) => [w.url, r.getByUrl(w.url)?.id, ids(r.allByUrl(w.url))]),
    size: r.size(),
  };
}

describe('registry views', () => {
  it('hand out the same arrays until something changes, and new ones after', () => {
    const r = new WorkerRegistry();
    r.applyUpsert({ kind: 'worker.upsert', id: 'a', spec: testWorkerSpec('http://a:1'), hlc: hlc(1) });
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'ready', hlc: hlc(2) });
    const list = r.list();
    const routable = r.routable('m');
    expect(r.list()).toBe(list);
    // an observation that changes nothing keeps the arrays (per-array caches stay valid)
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'ready', hlc: hlc(3) });
    expect(r.list()).toBe(list);
    expect(r.routable('m')).toBe(routable);
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'not_ready', hlc: hlc(4) });
    expect(r.routable('m')).not.toBe(routable);
    expect(r.routable('m')).toEqual([]);
    expect(r.get('a')?.status).toBe('not_ready');
  });

  it('keep every twin of a duplicated URL until one is removed', () => {
    const r = new WorkerRegistry();
    r.applyUpsert({ kind: 'worker.upsert', id: 'b', spec: testWorkerSpec('http://x:1'), hlc: hlc(1) });
    r.applyUpsert({ kind: 'worker.upsert', id: 'a', spec: testWorkerSpec('http://x:1'), hlc: hlc(2) });
    expect(r.allByUrl('http://x:1').map((w) => w.id)).toEqual(['b', 'a']);
    expect(r.getByUrl('http://x:1')?.id).toBe('a');
    r.applyRemove({ kind: 'worker.remove', id: 'a', hlc: hlc(3) });
    expect(r.allByUrl('http://x:1').map((w) => w.id)).toEqual(['b']);
    expect(r.getByUrl('http://x:1')?.id).toBe('b');
    r.applyRemove({ kind: 'worker.remove', id: 'b', hlc: hlc(4) });
    expect(r.getByUrl('http://x:1')).toBeUndefined();
    expect(r.size()).toBe(0);
  });

  it('exclusions apply to known workers only and end with the worker', () => {
    const r = new WorkerRegistry();
    r.setExcluded('ghost', true);
    expect(r.isExcluded('ghost')).toBe(false);
    r.applyUpsert({ kind: 'worker.upsert', id: 'a', spec: testWorkerSpec('http://a:1'), hlc: hlc(1) });
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'ready', hlc: hlc(2) });
    expect(r.routable().map((w) => w.id)).toEqual(['a']);
    r.setExcluded('a', true);
    expect(r.routable()).toEqual([]);
    r.applyRemove({ kind: 'worker.remove', id: 'a', hlc: hlc(3) });
    expect(r.isExcluded('a')).toBe(false);
  });

  it('read at any point, equal the views of a registry read only after the same events', () => {
    const ids = ['w1', 'w2', 'w3', 'w4'];
    // ready often, so that exclusions and judges have routable workers to act on
    const statuses: WorkerStatus[] = [
      'pending',
      'ready',
      'ready',
      'ready',
      'not_ready',
      'draining',
      'failed',
    ];
    const eventArb = fc.oneof(
      fc.record({
        kind: fc.constant('worker.upsert' as const),
        id: fc.constantFrom(...ids),
        url: fc.constantFrom('http://a:1', 'http://b:1', 'http://c:1', 'http://d:1'),
        models: fc.constantFrom([], ['m1'], ['m2'], ['m1', 'm2']),
      }),
      fc.record({ kind: fc.constant('worker.remove' as const), id: fc.constantFrom(...ids) }),
      fc.record({
        kind: fc.constant('worker.health' as const),
        id: fc.constantFrom(...ids),
        status: fc.constantFrom(...statuses),
        node: fc.constantFrom('p1', 'p2', 'p3'),
      }),
      fc.record({ kind: fc.constant('exclude' as const), id: fc.constantFrom(...ids), on: fc.boolean() }),
      fc.record({ kind: fc.constant('judge' as const), probers: fc.subarray(['p1', 'p2', 'p3']) }),
      fc.record({ kind: fc.constant('read' as const) }),
      fc.record({ kind: fc.constant('read' as const) }),
    );
    fc.assert(
      fc.property(fc.array(eventArb, { minLength: 10, maxLength: 60 }), (ops) => {
        const live = new WorkerRegistry();
        const replay: ((r: WorkerRegistry) => void)[] = [];
        let wall = 0;
        for (const op of ops) {
          wall++;
          let step: ((r: WorkerRegistry) => void) | undefined;
          if (op.kind === 'worker.upsert') {
            const spec = testWorkerSpec(op.url, [...op.models]);
            const ev: StateEvent = { kind: op.kind, id: op.id, spec, hlc: hlc(wall) };
            step = (r) => apply(r, ev);
          } else if (op.kind === 'worker.remove') {
            const ev: StateEvent = { kind: op.kind, id: op.id, hlc: hlc(wall) };
            step = (r) => apply(r, ev);
          } else if (op.kind === 'worker.health') {
            const ev: StateEvent = { kind: op.kind, id: op.id, status: op.status, hlc: hlc(wall, op.node) };
            step = (r) => apply(r, ev);
          } else if (op.kind === 'exclude') {
            step = (r) => r.setExcluded(op.id, op.on);
          } else if (op.kind === 'judge') {
            const probers = op.probers;
            step = (r) => r.setHealthJudge((_id, node) => probers.includes(node));
          } else {
            views(live);
          }
          if (step) {
            step(live);
            replay.push(step);
          }
          // every few steps, and at the end, against a registry that saw the events so far unread
          if (replay.length % 3 === 0 || op === ops[ops.length - 1]) {
            const fresh = new WorkerRegistry();
            for (const s of replay) s(fresh);
            expect(views(live)).toEqual(views(fresh));
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
