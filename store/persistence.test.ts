import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Replica } from '../src/state/replica.js';
import { testWorkerSpec } from '../src/testing/worker-spec.js';
import { NodeStore, StoreError } from './node-store.js';
import { COMPACT_THRESHOLD, openNodeState, persistReplica } from './persistence.js';

const dirs: string[] = [];
function dir(): string {
  const d = mkdtempSync(path.join(tmpdir(), 'smg-persist-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const spec = (url: string) => testWorkerSpec(url);

function boot(d: string) {
  const st = openNodeState(d, { nodeName: 'n1' });
  const replica = new Replica({ nodeId: st.nodeId, registryDoc: st.doc, hlcHighWater: st.hlcHighWater });
  const stop = persistReplica(st.store, replica);
  return { st, replica, stop, close: () => (stop(), st.store.close()) };
}

describe('node state on disk', () => {
  it('a restarted node serves its last registry at once, with a new incarnation and a clock ahead of the last run', () => {
    const d = dir();
    const first = boot(d);
    first.replica.writeRegistry((doc) => doc.upsertWorker('w1', spec('http://a:1')));
    first.replica.writeRegistry((doc) => doc.upsertWorker('w2', spec('http://b:1')));
    first.replica.writeRegistry((doc) => doc.removeWorker('w2'));
    first.replica.writeRegistry((doc) => doc.setConfig('k', 'ff'));
    const lastHlc = first.replica.tick();
    const nodeId = first.st.nodeId;
    const inc = first.st.incarnation;
    first.close();

    const second = boot(d);
    expect(second.st.nodeId).toBe(nodeId);
    expect(second.st.incarnation).toBe(inc + 1);
    expect(second.replica.registry.list().map((w) => w.url)).toEqual(['http://a:1']);
    expect(second.replica.registry.isRemoved('w2')).toBe(true);
    expect(second.replica.doc.config().get('k')).toBe('ff');
    const next = second.replica.tick();
    expect(next.wall > lastHlc.wall || (next.wall === lastHlc.wall && next.counter > lastHlc.counter)).toBe(
      true,
    );
    // the new incarnation writes under a new actor: no (actor, seq) reuse
    expect(second.replica.doc.actorId).not.toBe(first.replica.doc.actorId);
    second.close();
  });

  it('remote changes are stored too, and a long change log is compacted into a snapshot', () => {
    const d = dir();
    const a = boot(d);
    const other = new Replica({ nodeId: 'peer' });
    for (let i = 0; i < COMPACT_THRESHOLD + 20; i++) {
      const changes = other.writeRegistry((doc) =>
        doc.setConfig(`k${i % 7}`, i.toString(16).padStart(4, '0')),
      );
      a.replica.applyRegistryChanges(changes);
    }
    a.close();
    const store = NodeStore.open(d, { nodeName: 'n1' });
    const stored = store.loadDoc();
    expect(stored.snapshot).toBeDefined();
    expect(stored.changes.length).toBeLessThan(COMPACT_THRESHOLD);
    store.close();
    const b = boot(d);
    expect(b.replica.doc.config().get('k0')).toBe(other.doc.config().get('k0'));
    expect(b.replica.doc.heads()).toEqual(other.doc.heads());
    b.close();
  });

  it('a corrupt file or another node’s file is a clear error and is left untouched', () => {
    const d = dir();
    writeFileSync(path.join(d, 'state.db'), 'garbage');
    expect(() => openNodeState(d, { nodeName: 'n1' })).toThrow(StoreError);
    const d2 = dir();
    boot(d2).close();
    expect(() => openNodeState(d2, { nodeName: 'someone-else' })).toThrow(/n1|another node|belongs/i);
  });
});
