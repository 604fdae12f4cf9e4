import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blockHashes, blockHashesPortable, PromptHashes } from './block-hash.js';
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

  it('the fast path (UTF-16 words) and the portable one (charCodeAt) agree on any text', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'binary', maxLength: 400 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 10 }),
        (text, blockChars, maxBlocks) => {
          const fast = blockHashes(text, blockChars);
          expect(fast).toEqual(blockHashesPortable(text, blockChars));
          expect(fast).toHaveLength(Math.floor(text.length / blockChars));
          expect(blockHashes(text, blockChars, maxBlocks)).toEqual(fast.slice(0, maxBlocks));
          for (const h of fast) expect(Number.isSafeInteger(h) && h > 0).toBe(true);
        },
      ),
      { numRuns: 500 },
    );
    // a text longer than the reused buffer's cap
    const long = 'z'.repeat(2 ** 20 + 64);
    expect(blockHashes(long, 32)).toEqual(blockHashesPortable(long, 32));
  });

  it('PromptHashes computes on demand, in any order, interleaved with other prompts', () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ unit: 'binary', maxLength: 300 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 24 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        (texts, blockChars, picks) => {
          const lazy = texts.map((t) => new PromptHashes(t, blockChars));
          const eager = texts.map((t) => blockHashes(t, blockChars));
          // random reads across the prompts (they share one word buffer)
          for (const [k, p] of picks.entries()) {
            const j = k % texts.length;
            const i = eager[j].length > 0 ? p % (eager[j].length + 2) : p % 2;
            expect(lazy[j].at(i)).toBe(i < eager[j].length ? eager[j][i] : 0);
          }
          lazy.forEach((l, j) => {
            expect(l.length).toBe(eager[j].length);
            expect(l.all()).toEqual(eager[j]);
            expect(l.at(-1)).toBe(0);
          });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('odd block sizes chain as well', () => {
    const a = blockHashes('q'.repeat(33 * 3), 33);
    expect(new Set(a).size).toBe(3);
    expect(blockHashes('q'.repeat(33 * 2) + 'r'.repeat(33), 33).slice(0, 2)).toEqual(a.slice(0, 2));
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

  it('evicts a worker’s least recently used chains beyond its budget, whole chains first', () => {
    const idx = new CacheIndex(4);
    // chain A: [1, 2] at t1, extended from its deepest block 2 by [3, 4] at t5 (A is used at t5)
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 0, hashes: [1, 2], seen: seen(1) });
    // chain B: [10, 11, 12] at t3
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: [10, 11, 12],
      seen: seen(3),
    });
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 2, hashes: [3, 4], seen: seen(5) });
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w2', anchor: 0, hashes: [1], seen: seen(9) });
    expect(idx.heldBy('m', 'w1')).toBe(7);
    // A's first blocks were last seen at t1, but a request for A at t5 used them: B is the LRU chain
    expect(idx.evict()).toBe(3);
    expect(idx.heldBy('m', 'w1')).toBe(4);
    expect(idx.match('m', [10, 11, 12]).depths.size).toBe(0);
    expect(idx.match('m', [1, 2, 3, 4]).depths).toEqual(
      new Map([
        ['w1', 4],
        ['w2', 1],
      ]),
    );
    expect(idx.depthOf('m', [1, 2, 3, 4], 'w1')).toBe(4);
  });

  it('eviction drops the deepest blocks of a chain first (what stays is a prefix)', () => {
    const idx = new CacheIndex(4);
    const h = blockHashes('c'.repeat(32 * 10), 32);
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 0, hashes: h, seen: seen(1) });
    expect(idx.evict()).toBe(6);
    expect(idx.match('m', h).depths.get('w1')).toBe(4);
    expect(idx.depthOf('m', h, 'w1')).toBe(4);
    for (let i = 0; i < 4; i++) expect(idx.match('m', [h[i]]).depths.get('w1')).toBe(1);
  });

  it('deepest: the deepest prefix any candidate holds, and every candidate holding it', () => {
    const idx = new CacheIndex();
    const h = blockHashes('d'.repeat(32 * 8), 32);
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: h.slice(0, 6),
      seen: seen(1),
    });
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w2',
      anchor: 0,
      hashes: h.slice(0, 3),
      seen: seen(1),
    });
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w3',
      anchor: 0,
      hashes: h.slice(0, 3),
      seen: seen(1),
    });
    const candidates = (ids: string[]): Int32Array => {
      const bySlot = new Int32Array(8).fill(-1);
      ids.forEach((id, i) => {
        const s = idx.slotOfWorker(id);
        if (s >= 0) bySlot[s] = i;
      });
      return bySlot;
    };
    const holders: number[] = [];
    expect(idx.deepest('m', h, candidates(['w1', 'w2', 'w3']), holders)).toBe(6);
    expect(holders).toEqual([0]);
    expect(idx.deepest('m', h, candidates(['w3', 'w2']), holders)).toBe(3);
    expect(holders.sort()).toEqual([0, 1]);
    expect(idx.deepest('m', h, candidates(['w4']), holders)).toBe(0);
    expect(holders).toEqual([]);
    expect(idx.deepest('other', h, candidates(['w1']), holders)).toBe(0);
    expect(idx.deepest('m', [], candidates(['w1']), holders)).toBe(0);
    expect(idx.depthOf('m', h, 'w1')).toBe(6);
    expect(idx.depthOf('m', h, 'w1', 4)).toBe(4);
    expect(idx.depthOf('m', h, 'w2')).toBe(3);
    expect(idx.depthOf('m', h, 'nobody')).toBe(0);
    expect(idx.heldCounts('m')[idx.slotOfWorker('w1')]).toBe(6);
    expect(idx.heldCounts('other')).toEqual([]);
  });

  it('slotVersion changes when a worker gets or loses its slot', () => {
    const idx = new CacheIndex();
    const v0 = idx.slotVersion;
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 0, hashes: [1], seen: seen(1) });
    const v1 = idx.slotVersion;
    expect(v1).not.toBe(v0);
    idx.apply({ kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 1, hashes: [2], seen: seen(2) });
    expect(idx.slotVersion).toBe(v1);
    idx.removeWorker('w1');
    expect(idx.slotVersion).not.toBe(v1);
    expect(idx.slotOfWorker('w1')).toBe(-1);
  });

  it('ignores hashes that are not positive numbers (0 means "no block")', () => {
    const idx = new CacheIndex();
    idx.apply({
      kind: 'cache.blocks',
      model: 'm',
      worker: 'w1',
      anchor: 0,
      hashes: [0, -3, NaN, 7],
      seen: seen(1),
    });
    expect(idx.size()).toBe(1);
    expect(idx.match('m', [0, 7]).depths.get('w1')).toBe(2);
    expect(idx.depthOf('m', [0], 'w1')).toBe(0);
  });
});

/** a random forest of chained hashes: node i's parent is an earlier node or the root (0) */
function randomForest(rnd: () => number, n: number): { parent: number[]; hash: number[] } {
  const parent: number[] = [];
  const hash: number[] = [];
  for (let i = 0; i < n; i++) {
    parent.push(i === 0 || rnd() < 0.15 ? -1 : Math.floor(rnd() * i));
    hash.push(Math.floor(rnd() * 2 ** 52) + 1);
  }
  return { parent, hash };
}

function pathTo(f: { parent: number[]; hash: number[] }, node: number): number[] {
  const out: number[] = [];
  for (let i = node; i >= 0; i = f.parent[i]) out.push(f.hash[i]);
  return out.reverse();
}

const WORKERS = ['w0', 'w1', 'w2', 'w3', 'w4'];

describe('CacheIndex binary search (property)', () => {
  it('deepest / depthOf agree with the per-block scan for prefix-closed holdings, before and after eviction', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 - 1 }),
        fc.integer({ min: 5, max: 60 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 3, max: 80 }),
        (seed, nodes, steps, budget) => {
          let x = seed;
          const rnd = (): number => {
            x = (Math.imul(x, 1103515245) + 12345) >>> 0;
            return x / 2 ** 32;
          };
          const f = randomForest(rnd, nodes);
          const idx = new CacheIndex(budget);
          // each step: a worker extends its deepest block on a random path (as recordCache does)
          for (let s = 0; s < steps; s++) {
            const w = WORKERS[Math.floor(rnd() * WORKERS.length)];
            const path = pathTo(f, Math.floor(rnd() * nodes));
            const d = idx.depthOf('m', path, w);
            idx.apply({
              kind: 'cache.blocks',
              model: 'm',
              worker: w,
              anchor: d > 0 ? path[d - 1] : 0,
              hashes: path.slice(d),
              seen: seen(1 + Math.floor(rnd() * 5)),
            });
            if (rnd() < 0.2) idx.evict();
            if (rnd() < 0.03) idx.removeWorker(WORKERS[Math.floor(rnd() * WORKERS.length)]);
          }
          if (rnd() < 0.5) idx.evict();
          for (let node = 0; node < nodes; node++) {
            const path = pathTo(f, node);
            const m = idx.match('m', path);
            for (const w of WORKERS) expect(idx.depthOf('m', path, w)).toBe(m.depths.get(w) ?? 0);
            const cand = new Int32Array(WORKERS.length + 8).fill(-1);
            const ids = WORKERS.filter(() => rnd() < 0.6);
            ids.forEach((id, i) => {
              const slot = idx.slotOfWorker(id);
              if (slot >= 0) cand[slot] = i;
            });
            const holders: number[] = [];
            const d = idx.deepest('m', path, cand, holders);
            const best = Math.max(0, ...ids.map((id) => m.depths.get(id) ?? 0));
            expect(d).toBe(best);
            const expected = ids.flatMap((id, i) => (best > 0 && m.depths.get(id) === best ? [i] : []));
            expect(holders.sort((a, b) => a - b)).toEqual(expected);
            // every worker a candidate: presence alone decides until the last lookup
            const all = new Int32Array(WORKERS.length + 8).fill(-1);
            WORKERS.forEach((id, i) => {
              const slot = idx.slotOfWorker(id);
              if (slot >= 0) all[slot] = i;
            });
            const top = Math.max(0, ...WORKERS.map((id) => m.depths.get(id) ?? 0));
            expect(idx.deepest('m', path, all, holders, true)).toBe(top);
            expect(holders.sort((a, b) => a - b)).toEqual(
              WORKERS.flatMap((id, i) => (top > 0 && m.depths.get(id) === top ? [i] : [])),
            );
          }
          idx.evict();
          for (const w of WORKERS) expect(idx.heldBy('m', w)).toBeLessThanOrEqual(budget);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('the table keeps every block through growth and deletions (against a plain Map model)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (seed) => {
        let x = seed;
        const rnd = (): number => {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          return x / 2 ** 32;
        };
        const idx = new CacheIndex();
        const model = new Map<string, Map<number, number>>(); // worker → hash → secs
        // few distinct hashes (many collisions of homes) or many (growth), small and 53-bit
        const space = rnd() < 0.5 ? 64 : 2 ** 53 - 1;
        for (let step = 0; step < 60; step++) {
          const w = WORKERS[Math.floor(rnd() * WORKERS.length)];
          if (rnd() < 0.1) {
            idx.removeWorker(w);
            model.delete(w);
            continue;
          }
          const hashes = Array.from({ length: Math.floor(rnd() * 120) }, () => 1 + Math.floor(rnd() * space));
          const t = 1 + Math.floor(rnd() * 9);
          idx.apply({ kind: 'cache.blocks', model: 'm', worker: w, anchor: 0, hashes, seen: seen(t) });
          const held = model.get(w) ?? new Map<number, number>();
          for (const h of hashes) held.set(h, Math.max(held.get(h) ?? 0, t));
          model.set(w, held);
        }
        const expected = new Map<number, [string, number][]>();
        for (const [w, held] of model)
          for (const [h, t] of held) expected.set(h, [...(expected.get(h) ?? []), [w, t]]);
        const exported = idx.exportState();
        const blocks = exported.length > 0 ? exported[0][1] : [];
        expect(blocks.length).toBe(expected.size);
        expect(idx.size()).toBe(expected.size);
        for (const [h, pairs] of blocks) {
          expect(pairs).toEqual((expected.get(h) ?? []).sort((a, b) => (a[0] < b[0] ? -1 : 1)));
        }
        for (const w of WORKERS) expect(idx.heldBy('m', w)).toBe(model.get(w)?.size ?? 0);
      }),
      { numRuns: 100 },
    );
  });
});
