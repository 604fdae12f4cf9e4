import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Replica } from '../src/state/replica.js';
import { testWorkerSpec } from '../src/testing/worker-spec.js';
import { NodeStore, StoreError } from './node-store.js';
import { packHlc } from '../src/state/hlc.js';
import {
  COMPACT_THRESHOLD,
  openNodeState,
  persistCacheIndex,
  persistReplica,
  restoreCacheIndex,
} from './persistence.js';

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

  it('a cache flush empties the stored prefix index of the worker; a restart does not bring it back', () => {
    const d = dir();
    const first = boot(d);
    const stopCache = persistCacheIndex(first.st.store, first.replica);
    for (const w of ['w1', 'w2'])
      first.replica.writeRegistry((doc) => doc.upsertWorker(w, spec(`http://${w}:1`)));
    const blocks = (worker: string, hashes: number[]) =>
      first.replica.apply({
        kind: 'cache.blocks',
        model: 'm',
        worker,
        anchor: 0,
        hashes,
        seen: packHlc(first.replica.tick()),
      });
    blocks('w1', [1, 2, 3]);
    blocks('w2', [4, 5]);
    stopCache(); // writes the queued rows
    const rows = () =>
      first.st.store
        .loadCacheBlocks(100)
        .map((r) => `${r.worker}:${r.hash}`)
        .sort();
    expect(rows()).toEqual(['w1:1', 'w1:2', 'w1:3', 'w2:4', 'w2:5']);
    const again = persistCacheIndex(first.st.store, first.replica);
    blocks('w1', [6]); // queued, not yet written when the flush comes
    first.replica.flushCacheIndex(['w1']);
    blocks('w1', [7]); // after the flush: kept
    again();
    expect(rows()).toEqual(['w1:7', 'w2:4', 'w2:5']);
    // rows a crash left behind (written before the flush reached the store) are dropped at restore
    first.st.store.putCacheBlocks([{ model: 'm', worker: 'w1', hash: 9, parent: 0, seen: 1 }]);
    first.close();
    const second = boot(d);
    expect(restoreCacheIndex(second.st.store, second.replica)).toBe(3);
    expect(second.replica.cache.match('m', [1, 2, 3]).depths.get('w1')).toBeUndefined();
    expect(second.replica.cache.match('m', [7]).depths.get('w1')).toBe(1);
    expect(
      second.st.store
        .loadCacheBlocks(100)
        .map((r) => `${r.worker}:${r.hash}`)
        .sort(),
    ).toEqual(['w1:7', 'w2:4', 'w2:5']);
    second.close();
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
