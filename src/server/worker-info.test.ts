import { describe, expect, it } from 'vitest';
import { WorkerRegistry } from '../state/registry.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import type { JobStatus } from '../workers/manager.js';
import { workerInfo, workersBody } from './worker-info.js';

const hlc = (wall: number) => ({ wall, counter: 0, node: 'n' });

/** what the route sent before: JSON.stringify of the WorkerInfo objects */
function expected(
  r: WorkerRegistry,
  loads: Record<string, number>,
  jobs: Record<string, JobStatus | undefined>,
): string {
  const list = r.list();
  const stats = { prefill_count: 0, decode_count: 0, regular_count: 0 };
  for (const w of list) {
    if (w.spec.worker_type === 'prefill') stats.prefill_count++;
    else if (w.spec.worker_type === 'decode') stats.decode_count++;
    else stats.regular_count++;
  }
  return JSON.stringify({
    workers: list.map((w) => workerInfo(w, loads[w.id] ?? 0, jobs[w.id])),
    total: list.length,
    stats,
  });
}

describe('workersBody', () => {
  it('is byte for byte the JSON of the WorkerInfo list, api_key withheld, load and job per call', () => {
    const r = new WorkerRegistry();
    const secret = {
      ...testWorkerSpec('http://a:1', ['m1', 'm2']),
      api_key: 'sk-secret',
      labels: { z: 'q"\\é' },
    };
    r.applyUpsert({ kind: 'worker.upsert', id: 'a', spec: secret, hlc: hlc(1) });
    r.applyUpsert({
      kind: 'worker.upsert',
      id: 'b',
      spec: { ...testWorkerSpec('http://b:1', []), worker_type: 'prefill' },
      hlc: hlc(2),
    });
    const running: JobStatus = { state: 'running', message: 'discovering "models"' };
    const cases: [Record<string, number>, Record<string, JobStatus | undefined>][] = [
      [{}, {}],
      [{ a: 7 }, { b: running }],
      [{ a: 0, b: 3 }, { a: { state: 'completed', message: 'done' } }],
    ];
    for (const [loads, jobs] of cases) {
      const body = workersBody(
        r.list(),
        (id) => loads[id] ?? 0,
        (id) => jobs[id],
      );
      expect(body.toString('utf8')).toBe(expected(r, loads, jobs));
      expect(body.toString('utf8')).not.toContain('sk-secret');
    }
    // the same list, loads and jobs: the same bytes, not assembled again; any change: new bytes
    const loadsNow: Record<string, number> = { a: 1 };
    const first = workersBody(
      r.list(),
      (id) => loadsNow[id] ?? 0,
      () => undefined,
    );
    expect(
      workersBody(
        r.list(),
        (id) => loadsNow[id] ?? 0,
        () => undefined,
      ),
    ).toBe(first);
    loadsNow.a = 2;
    expect(
      workersBody(
        r.list(),
        (id) => loadsNow[id] ?? 0,
        () => undefined,
      ).toString(),
    ).toBe(expected(r, loadsNow, {}));
    expect(
      workersBody(
        r.list(),
        (id) => loadsNow[id] ?? 0,
        (id) => (id === 'b' ? running : undefined),
      ).toString(),
    ).toBe(expected(r, loadsNow, { b: running }));
    // a new view (status changed) is written anew, not from the old view's cache
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'ready', hlc: hlc(3) });
    const parsed = JSON.parse(
      workersBody(
        r.list(),
        () => 0,
        () => undefined,
      ).toString(),
    ) as {
      workers: { id: string; status: string; is_healthy: boolean }[];
    };
    expect(parsed.workers.find((w) => w.id === 'a')).toMatchObject({ status: 'ready', is_healthy: true });
    expect(
      workersBody(
        [],
        () => 0,
        () => undefined,
      ).toString(),
    ).toBe('{"workers":[],"total":0,"stats":{"prefill_count":0,"decode_count":0,"regular_count":0}}');
  });
});
