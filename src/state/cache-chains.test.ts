import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CacheIndex } from './cache-index.js';
import { chainsOf, type CacheRow } from './cache-chains.js';

function rowsOf(index: CacheIndex): CacheRow[] {
  const rows: CacheRow[] = [];
  index.forEachBlock((model, worker, hash, parent, seen) => rows.push({ model, worker, hash, parent, seen }));
  return rows;
}

describe('chainsOf', () => {
  it('groups a branched prompt tree into one delta per unbranched run', () => {
    const seen = 5 * 1000 * 1024;
    const rows: CacheRow[] = [
      { model: 'm', worker: 'w', hash: 1, parent: 0, seen },
      { model: 'm', worker: 'w', hash: 2, parent: 1, seen },
      { model: 'm', worker: 'w', hash: 3, parent: 2, seen },
      { model: 'm', worker: 'w', hash: 4, parent: 2, seen },
      { model: 'm', worker: 'v', hash: 1, parent: 0, seen },
    ];
    const deltas = chainsOf(rows);
    expect(deltas).toHaveLength(3);
    const w = deltas.filter((d) => d.worker === 'w');
    expect(w[0]).toMatchObject({ anchor: 0, hashes: [1, 2, 3] });
    expect(w[1]).toMatchObject({ anchor: 2, hashes: [4] });
  });

  it('never loops on cycles or self-parents, and emits every row once', () => {
    const rows: CacheRow[] = [
      { model: 'm', worker: 'w', hash: 1, parent: 2, seen: 1 },
      { model: 'm', worker: 'w', hash: 2, parent: 1, seen: 1 },
      { model: 'm', worker: 'w', hash: 3, parent: 3, seen: 1 },
    ];
    const hashes = chainsOf(rows).flatMap((d) => d.hashes);
    expect(hashes.sort()).toEqual([1, 2, 3]);
  });

  it('an index rebuilt from its own rows holds the same blocks (property)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            worker: fc.constantFrom('a', 'b', 'c'),
            prefix: fc.nat({ max: 3 }),
            len: fc.integer({ min: 1, max: 6 }),
            secs: fc.integer({ min: 1, max: 1000 }),
          }),
          { maxLength: 30 },
        ),
        (prompts) => {
          const src = new CacheIndex();
          for (const p of prompts) {
            // chained hashes sharing a prefix per `prefix` value
            const hashes = Array.from({ length: p.len }, (_, i) =>
              i < 2 ? 100 * (p.prefix + 1) + i : 1e6 + p.len * 1000 + p.prefix * 10 + i,
            );
            src.apply({
              kind: 'cache.blocks',
              model: 'm',
              worker: p.worker,
              anchor: 0,
              hashes,
              seen: p.secs * 1000 * 1024,
            });
          }
          const copy = new CacheIndex();
          for (const ev of chainsOf(rowsOf(src))) copy.apply(ev);
          expect(copy.exportState()).toEqual(src.exportState());
        },
      ),
      { numRuns: 100 },
    );
  });
});
