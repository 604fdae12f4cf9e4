import { describe, expect, it } from 'vitest';
import { WorkerRegistry } from '../state/registry.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import { workerInfo, workerInfoJson } from './worker-info.js';

const hlc = (wall: number) => ({ wall, counter: 0, node: 'n' });

describe('workerInfoJson', () => {
  it('is the JSON of workerInfo, api_key withheld, with load and job written per call', () => {
    const r = new WorkerRegistry();
    const spec = {
      ...testWorkerSpec('http://a:1', ['m1', 'm2']),
      api_key: 'sk-secret',
      labels: { z: 'q"\\' },
    };
    r.applyUpsert({ kind: 'worker.upsert', id: 'a', spec, hlc: hlc(1) });
    const w = r.get('a')!;
    const running = { state: 'running' as const, message: 'discovering "models"' };
    for (const [load, job] of [
      [0, undefined],
      [7, running],
      [3, { state: 'completed' as const, message: 'done' }],
    ] as const) {
      const text = workerInfoJson(w, load, job);
      expect(text).toBe(JSON.stringify(workerInfo(w, load, job)));
      expect(text).not.toContain('sk-secret');
      expect(JSON.parse(text)).toMatchObject({ id: 'a', load, models: [{ id: 'm1' }, { id: 'm2' }] });
    }
    // a new view (status changed) is written anew, not from the old view's cache
    r.applyHealth({ kind: 'worker.health', id: 'a', status: 'ready', hlc: hlc(2) });
    const ready = r.get('a')!;
    expect(JSON.parse(workerInfoJson(ready, 0))).toMatchObject({ status: 'ready', is_healthy: true });
  });
});
