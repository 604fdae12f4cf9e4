import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvCache } from './kv-cache.js';
import { countTokens, embed, generate, textSeed, tokenIds } from './tokens.js';

describe('tokens', () => {
  it('counts ceil(chars / 4) tokens and ids one per 4-char chunk', () => {
    expect(countTokens('')).toBe(0);
    expect(countTokens('hello')).toBe(2);
    expect(countTokens('abcdefgh')).toBe(2);
    const ids = tokenIds('abcdabcdxy');
    expect(ids.length).toBe(3);
    expect(ids[0]).toBe(ids[1]);
    expect(ids[2]).not.toBe(ids[0]);
  });

  it('generates deterministic words', () => {
    const a = generate(textSeed('hi'), 5);
    expect(a).toEqual(generate(textSeed('hi'), 5));
    expect(a.pieces).toHaveLength(5);
    expect(a.pieces[0].startsWith(' ')).toBe(false);
    expect(a.pieces.slice(1).every((p) => p.startsWith(' '))).toBe(true);
  });

  it('embeds deterministically with unit length', () => {
    const v = embed('x', 16);
    expect(Array.from(v)).toEqual(Array.from(embed('x', 16)));
    expect(Math.hypot(...v)).toBeCloseTo(1, 5);
  });
});

describe('KvCache', () => {
  const ids = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => i * 7 + salt);

  it('matches leading full blocks only', () => {
    const c = new KvCache(100, 4);
    const a = c.keys(ids(10));
    expect(a).toHaveLength(2);
    expect(c.match(a)).toBe(0);
    c.insert(a);
    expect(c.match(c.keys(ids(10)))).toBe(2);
    expect(c.match(c.keys(ids(13)))).toBe(2); // longer prompt, same prefix: blocks 0,1 hit, block 2 new
    const diverged = ids(12);
    diverged[5] = 999;
    expect(c.match(c.keys(diverged))).toBe(1);
    c.flush();
    expect(c.size).toBe(0);
    expect(c.match(a)).toBe(0);
  });

  it('chains keys: equal blocks at different prefixes differ', () => {
    const c = new KvCache(100, 2);
    const k = c.keys([1, 2, 1, 2]);
    expect(k[0]).not.toBe(k[1]);
  });

  it('evicts least recently used blocks, leaves before roots', () => {
    const c = new KvCache(4, 1);
    c.insert(c.keys([1, 2, 3]));
    c.insert(c.keys([9, 8]));
    expect(c.size).toBe(4);
    // [1,2,3] was inserted first, its deepest block (3) is the oldest and goes
    expect(c.match(c.keys([1, 2, 3]))).toBe(2);
    expect(c.match(c.keys([9, 8]))).toBe(2);
    c.insert(c.keys([1, 2])); // touch
    c.insert(c.keys([5]));
    expect(c.match(c.keys([1, 2]))).toBe(2);
    expect(c.match(c.keys([9, 8]))).toBe(1);
  });

  it('never exceeds capacity and always hits a just-inserted prefix that fits', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 30 }), { maxLength: 20 }),
        (cap, prompts) => {
          const c = new KvCache(cap, 2);
          for (const p of prompts) {
            const k = c.keys(p);
            c.insert(k);
            expect(c.size).toBeLessThanOrEqual(cap);
            expect(c.match(k)).toBe(Math.min(k.length, cap));
          }
        },
      ),
    );
  });
});
