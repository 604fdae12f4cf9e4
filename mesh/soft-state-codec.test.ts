import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  SoftKind,
  SoftStateCodecError,
  decodeSoftState,
  encodeCache,
  encodeHealth,
  encodeLoad,
  encodeSlots,
} from './soft-state-codec.js';
import { CacheIndex, CHECKPOINT_STRIDE } from '../src/state/cache-index.js';
import { checkpointDelta, rendezvous } from './soft-state.js';

const head = { origin: 'node-a', seq: 123456789, sentAt: 1_700_000_000_000 };
const W1 = '0f8fad5b-d9cb-469f-a165-70867728950e';

describe('soft-state codec', () => {
  it('round-trips cache deltas, with UUID and other worker ids, up to 53-bit hashes', () => {
    const deltas = [
      { model: 'm', worker: W1, anchor: 0, hashes: [1, 2 ** 53 - 1, 12345], seen: 42 * 1000 * 1024 },
      { model: 'other', worker: 'http://w:8000', anchor: 2 ** 40, hashes: [], seen: 0 },
    ];
    const msg = decodeSoftState(encodeCache(head, deltas));
    expect(msg).toEqual({ kind: SoftKind.Cache, ...head, deltas });
  });

  it('round-trips load snapshots, rate-limit slots and health items', () => {
    const load = { ttlMs: 3000, inflight: { [W1]: 7, plain: 0 } };
    expect(decodeSoftState(encodeLoad(head, load))).toMatchObject({ kind: SoftKind.Load, load });
    const slots = [{ key: 'tenant:a', window: 28_000_000, windowMs: 60_000, requests: 5, tokens: 1234 }];
    expect(decodeSoftState(encodeSlots(head, slots))).toMatchObject({ kind: SoftKind.RateLimit, slots });
    const items = [
      {
        type: 'observation' as const,
        worker: W1,
        status: 'not_ready' as const,
        hlc: { wall: 5, counter: 3, node: 'node-a' },
      },
      { type: 'suspect' as const, worker: 'w2' },
    ];
    expect(decodeSoftState(encodeHealth(head, items))).toMatchObject({ kind: SoftKind.Health, items });
  });

  it('a UUID worker id costs 17 bytes on the wire', () => {
    const a = encodeLoad(head, { ttlMs: 1, inflight: { [W1]: 1 } }).length;
    const b = encodeLoad(head, { ttlMs: 1, inflight: { x: 1 } }).length;
    expect(a - b).toBe(17 - 3);
  });

  it('every truncation and every random corruption is rejected with SoftStateCodecError or decodes', () => {
    const bytes = encodeCache(head, [{ model: 'm', worker: W1, anchor: 9, hashes: [1, 2, 3], seen: 5 }]);
    for (let n = 0; n < bytes.length; n++) {
      expect(() => decodeSoftState(bytes.subarray(0, n))).toThrow(SoftStateCodecError);
    }
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (junk) => {
        try {
          decodeSoftState(junk);
        } catch (err) {
          expect(err).toBeInstanceOf(SoftStateCodecError);
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.nat({ max: bytes.length - 1 }), fc.integer({ min: 1, max: 255 }), (i, x) => {
        const copy = Uint8Array.from(bytes);
        copy[i] ^= x;
        try {
          decodeSoftState(copy);
        } catch (err) {
          expect(err).toBeInstanceOf(SoftStateCodecError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses counts larger than the bytes that follow (no huge allocations)', () => {
    const bytes = Uint8Array.from([...encodeSlots(head, []).subarray(0, -1), 0xff, 0xff, 0xff, 0x7f]);
    expect(() => decodeSoftState(bytes)).toThrow(/exceeds/);
  });
});

describe('rendezvous prober choice', () => {
  const members = ['a', 'b', 'c', 'd', 'e'];

  it('is the same in every view with the same members, whatever their order', () => {
    for (let w = 0; w < 50; w++) {
      const p = rendezvous(`worker-${w}`, members, 2);
      expect(p).toHaveLength(2);
      expect(rendezvous(`worker-${w}`, [...members].reverse(), 2)).toEqual(p);
    }
  });

  it('moves only the workers of a member that leaves, and spreads duty evenly', () => {
    const counts = new Map<string, number>();
    let moved = 0;
    for (let w = 0; w < 1000; w++) {
      const before = rendezvous(`worker-${w}`, members, 2);
      for (const m of before) counts.set(m, (counts.get(m) ?? 0) + 1);
      const after = rendezvous(
        `worker-${w}`,
        members.filter((m) => m !== 'c'),
        2,
      );
      if (!before.includes('c')) expect(after).toEqual(before);
      else {
        moved++;
        expect(after).toContain(before.find((m) => m !== 'c'));
      }
    }
    expect(moved).toBeGreaterThan(250);
    for (const n of counts.values()) expect(n).toBeGreaterThan(300); // 400 each when even
  });
});

describe('checkpoint deltas (what peers learn of a routing decision)', () => {
  const S = CHECKPOINT_STRIDE;
  const chain = Array.from({ length: 100 }, (_, i) => 1000 + i);

  it('keeps the blocks at depths S, 2S, … and the anchor only when it is a checkpoint', () => {
    const ev = (from: number, to: number) => ({
      kind: 'cache.blocks' as const,
      model: 'm',
      worker: 'w',
      anchor: from > 0 ? chain[from - 1] : 0,
      hashes: chain.slice(from, to),
      seen: 1,
      from,
    });
    expect(checkpointDelta(ev(0, 20))?.hashes).toEqual([chain[S - 1], chain[2 * S - 1]]);
    expect(checkpointDelta(ev(0, 20))?.anchor).toBe(0);
    expect(checkpointDelta(ev(S, 3 * S))).toMatchObject({
      anchor: chain[S - 1],
      hashes: [chain[2 * S - 1], chain[3 * S - 1]],
    });
    expect(checkpointDelta(ev(3, 7))).toBeUndefined();
    expect(checkpointDelta(ev(5, 6 + S))?.anchor).toBe(0);
  });

  it('a peer fed only checkpoints matches at most S − 1 blocks short of the routing node', () => {
    const local = new CacheIndex();
    const peer = new CacheIndex();
    let from = 0;
    for (const to of [13, 29, 30, 47, 64, 81, 100]) {
      const ev = {
        kind: 'cache.blocks' as const,
        model: 'm',
        worker: 'w',
        anchor: from > 0 ? chain[from - 1] : 0,
        hashes: chain.slice(from, to),
        seen: 5 * 1000 * 1024,
        from,
      };
      local.apply(ev);
      const d = checkpointDelta(ev);
      if (d) peer.apply({ kind: 'cache.blocks', ...d });
      from = to;
    }
    for (let n = 1; n <= 100; n++) {
      const prompt = [...chain.slice(0, n), 9_999_999];
      const exact = local.depthOf('m', prompt, 'w');
      expect(exact).toBe(n);
      const seen = peer.depthOf('m', prompt, 'w');
      expect(seen).toBe(Math.floor(n / S) * S);
    }
  });
});
