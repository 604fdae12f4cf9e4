/**
 * A flushed cache is forgotten everywhere: the epoch written to the registry drops the worker's
 * blocks on every replica that receives it (also one that receives it late, or reads it back from
 * a saved document), voids blocks that arrive afterwards with an older `seen`, and keeps those
 * recorded after it.
 */
import { describe, expect, it } from 'vitest';
import { testWorkerSpec } from '../testing/worker-spec.js';
import {
  cacheFlushEpochs,
  cacheFlushKey,
  cacheFlushWorker,
  decodeCacheFlush,
  encodeCacheFlush,
} from './cache-flush.js';
import { packHlc } from './hlc.js';
import { RegistryDoc, actorIdFor } from './registry-doc.js';
import { Replica } from './replica.js';

/** a replica whose wall clock is `clock.now` (moved by the test) */
function replica(nodeId: string, clock: { now: number }, registryDoc?: RegistryDoc): Replica {
  return new Replica({ nodeId, now: () => clock.now, ...(registryDoc && { registryDoc }) });
}

/** `worker` holds the 3 blocks of prompt `p` of model m, as recorded by `by` now */
function record(target: Replica, by: Replica, worker: string, p: number): boolean {
  return target.apply({
    kind: 'cache.blocks',
    model: 'm',
    worker,
    anchor: 0,
    hashes: [p * 10 + 1, p * 10 + 2, p * 10 + 3],
    seen: packHlc(by.tick()),
  });
}

function depth(r: Replica, worker: string, p: number): number {
  return r.cache.match('m', [p * 10 + 1, p * 10 + 2, p * 10 + 3]).depths.get(worker) ?? 0;
}

describe('cache-flush entries', () => {
  it('round-trip, and a worker epoch is the largest over the flushing nodes', () => {
    expect(decodeCacheFlush(encodeCacheFlush(123_456))).toBe(123_456);
    for (const bad of [
      'zz',
      'abc',
      Buffer.from('{"seen":-1}').toString('hex'),
      Buffer.from('[]').toString('hex'),
    ])
      expect(decodeCacheFlush(bad)).toBeUndefined();
    expect(cacheFlushWorker(cacheFlushKey('w-1', 'node-a'))).toBe('w-1');
    expect(cacheFlushWorker('global_rate_limit')).toBeUndefined();
    const config = new Map([
      [cacheFlushKey('w1', 'a'), encodeCacheFlush(5)],
      [cacheFlushKey('w1', 'b'), encodeCacheFlush(9)],
      [cacheFlushKey('w2', 'a'), 'not hex'],
      ['other', encodeCacheFlush(7)],
    ]);
    expect([...cacheFlushEpochs(config)]).toEqual([['w1', 9]]);
  });
});

describe('Replica.flushCacheIndex', () => {
  it("drops the workers' blocks here and on a peer, and voids late deltas, but keeps later records", () => {
    const clock = { now: 1_700_000_000_000 };
    const a = replica('node-a', clock);
    const b = replica('node-b', clock);
    b.applyRegistryChanges(a.writeRegistry((d) => d.upsertWorker('w1', testWorkerSpec('http://w1:1'))));
    b.applyRegistryChanges(a.writeRegistry((d) => d.upsertWorker('w2', testWorkerSpec('http://w2:1'))));
    // both replicas hold prompt 1 on w1 and prompt 2 on w2; a delta of prompt 3 (w1) is still on its way to b
    for (const r of [a, b]) {
      record(r, a, 'w1', 1);
      record(r, a, 'w2', 2);
    }
    const late = {
      kind: 'cache.blocks' as const,
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: [31, 32, 33],
      seen: packHlc(a.tick()),
    };
    clock.now += 2_000;
    const flushed: [string, string][] = [];
    for (const r of [a, b]) r.onCacheFlushed((w) => flushed.push([r.nodeId, w]));
    const before = a.doc.heads();
    a.flushCacheIndex(['w1']);
    expect(depth(a, 'w1', 1)).toBe(0);
    expect(depth(a, 'w2', 2)).toBe(3);
    // the peer learns it through the registry (gossip or sync), whenever that is
    b.applyRegistryChanges(a.doc.getChangesSince(before));
    expect(depth(b, 'w1', 1)).toBe(0);
    expect(depth(b, 'w2', 2)).toBe(3);
    expect(flushed).toEqual([
      ['node-a', 'w1'],
      ['node-b', 'w1'],
    ]);
    expect(b.apply(late)).toBe(false);
    expect(depth(b, 'w1', 3)).toBe(0);
    // b's clock passed the epoch: what it records now survives, even within the flush's millisecond
    expect(record(b, b, 'w1', 4)).toBe(true);
    expect(depth(b, 'w1', 4)).toBe(3);
    expect(record(a, b, 'w1', 4)).toBe(true);
  });

  it('a replica restored from a saved document ignores the stored blocks older than the flush', () => {
    const clock = { now: 1_700_000_000_000 };
    const a = replica('node-a', clock);
    a.writeRegistry((d) => d.upsertWorker('w1', testWorkerSpec('http://w1:1')));
    const old = packHlc(a.tick());
    clock.now += 5_000;
    a.flushCacheIndex(['w1']);
    const restored = replica('node-a', clock, RegistryDoc.load(actorIdFor('node-a', 1), a.doc.save()));
    expect(restored.cacheEpochs().get('w1')).toBe(a.cacheEpochs().get('w1'));
    const row = { kind: 'cache.blocks' as const, model: 'm', worker: 'w1', anchor: 0, hashes: [7] };
    expect(restored.apply({ ...row, seen: old })).toBe(false);
    expect(restored.apply({ ...row, seen: packHlc(restored.tick()) })).toBe(true);
  });

  it('keeps one entry per flushing node: concurrent flushes both count, a later one replaces both', () => {
    const clock = { now: 1_700_000_000_000 };
    const a = replica('node-a', clock);
    const b = replica('node-b', clock);
    b.applyRegistryChanges(a.writeRegistry((d) => d.upsertWorker('w1', testWorkerSpec('http://w1:1'))));
    b.applyRegistryChanges(a.writeRegistry((d) => d.upsertWorker('w2', testWorkerSpec('http://w2:1'))));
    const [ha, hb] = [a.doc.heads(), b.doc.heads()];
    a.flushCacheIndex(['w1']);
    clock.now += 10;
    b.flushCacheIndex(['w1']);
    a.applyRegistryChanges(b.doc.getChangesSince(hb));
    b.applyRegistryChanges(a.doc.getChangesSince(ha));
    const keys = (r: Replica) => [...r.doc.config().keys()].sort();
    expect(keys(a)).toEqual([cacheFlushKey('w1', 'node-a'), cacheFlushKey('w1', 'node-b')]);
    expect(a.cacheEpochs()).toEqual(b.cacheEpochs());
    expect(a.cacheEpochs().get('w1')).toBe(
      decodeCacheFlush(b.doc.config().get(cacheFlushKey('w1', 'node-b'))!),
    );
    // a removed worker's entries go with the next flush
    a.writeRegistry((d) => d.removeWorker('w2'));
    a.writeRegistry((d) => d.setConfig(cacheFlushKey('w2', 'node-b'), encodeCacheFlush(1)));
    clock.now += 10;
    a.flushCacheIndex(['w1']);
    expect(keys(a)).toEqual([cacheFlushKey('w1', 'node-a')]);
    expect(a.cacheEpochs().get('w1')).toBeGreaterThan(b.cacheEpochs().get('w1')!);
  });
});
