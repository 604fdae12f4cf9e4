import { describe, expect, it } from 'vitest';
import { blockHashes } from './block-hash.js';
import { CacheIndex } from './cache-index.js';

const seen = (secs: number) => secs * 1000 * 1024;

describe('blockHashes', () => {
  it('hashes full blocks only, chained so each hash names the whole prefix', () => {
    const a = blockHashes('x'.repeat(100), 32);
    expect(a).toHaveLength(3);
    const b = blockHashes('x'.repeat(96) + 'different tail', 32);
    expect(b.slice(0, 3)).toEqual(a);
    // same block content at a different depth hashes differently
    expect(new Set(a).size).toBe(3);
    // a change in block 0 changes every later hash
    const c = blockHashes('y' + 'x'.repeat(99), 32);
    expect(c.every((h, i) => h !== a[i])).toBe(true);
  });

  it('produces safe non-zero integers and no collisions on a large random sample', () => {
    const all = new Set<number>();
    let text = '';
    let x = 12345;
    for (let i = 0; i < 20_000; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      text += String.fromCharCode(32 + ((x >>> 16) % 90));
    }
    for (let start = 0; start < 2000; start++) {
      for (const h of blockHashes(text.slice(start, start + 640), 32)) {
        expect(Number.isSafeInteger(h) && h > 0).toBe(true);
        all.add(h);
      }
    }
    // 2000 distinct windows × 20 blocks, all distinct prefixes
    expect(all.size).toBe(40_000);
  });
});

describe('CacheIndex', () => {
  it('matches, per worker, the deepest block of the prompt it holds', () => {
    const idx = new CacheIndex();
    const h = blockHashes('a'.repeat(32 * 6), 32);
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: h.slice(0, 4),
      seen: seen(1),
    });
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w2',
      anchor: 0,
      hashes: h.slice(0, 2),
      seen: seen(1),
    });
    const m = idx.match('m', h);
    expect(m.depths.get('w1')).toBe(4);
    expect(m.depths.get('w2')).toBe(2);
    expect(m.known).toBe(4);
    expect(idx.match('other-model', h).depths.size).toBe(0);
    expect(idx.heldBy('m', 'w1')).toBe(4);
    expect(idx.size()).toBe(4);
  });

  it('an anchored delta extends a worker from its deepest block', () => {
    const idx = new CacheIndex();
    const h = blockHashes('b'.repeat(32 * 5), 32);
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: h.slice(0, 2),
      seen: seen(1),
    });
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: h[1],
      hashes: h.slice(2),
      seen: seen(2),
    });
    expect(idx.match('m', h).depths.get('w1')).toBe(5);
    expect(idx.heldBy('m', 'w1')).toBe(5);
  });

  it('reports whether a delta changed anything (duplicates are no-ops)', () => {
    const idx = new CacheIndex();
    const ev = {
      kind: 'cache.blocks' as const,
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: [1, 2, 3],
      seen: seen(5),
    };
    expect(idx.apply(ev)).toBe(true);
    expect(idx.apply(ev)).toBe(false);
    expect(idx.apply({ ...ev, seen: seen(4) })).toBe(false);
    expect(idx.apply({ ...ev, seen: seen(6) })).toBe(true);
  });

  it('removeWorker drops all of its blocks and keeps shared blocks for others', () => {
    const idx = new CacheIndex();
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: [1, 2, 3],
      seen: seen(1),
    });
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w2', anchor: 0, hashes: [1, 2], seen: seen(1) });
    idx.removeWorker('w1');
    expect(idx.match('m', [1, 2, 3]).depths).toEqual(new Map([['w2', 2]]));
    expect(idx.size()).toBe(2);
    expect(idx.heldBy('m', 'w1')).toBe(0);
  });

  it('evicts a worker’s least recently seen blocks beyond its budget', () => {
    const idx = new CacheIndex(3);
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 0, hashes: [1, 2], seen: seen(1) });
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 2, hashes: [3, 4], seen: seen(5) });
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w2', anchor: 0, hashes: [1], seen: seen(9) });
    expect(idx.heldBy('m', 'w1')).toBe(4);
    const evicted = idx.evict();
    expect(evicted).toBe(1);
    expect(idx.heldBy('m', 'w1')).toBe(3);
    // block 1 (oldest for w1) went for w1 but stays for w2
    expect(idx.match('m', [1]).depths).toEqual(new Map([['w2', 1]]));
    expect(idx.match('m', [1, 2, 3, 4]).depths.get('w1')).toBe(4);
  });
});
