import { describe, expect, it } from 'vitest';
import { CacheIndex } from '../state/cache-index.js';
import type { CacheBlocksEvent } from '../state/events.js';
import { CacheRecorder } from './cache-recorder.js';

describe('CacheRecorder', () => {
  it('queues deltas and applies them in order on flush, as the events recordCache stands for', () => {
    const applied: CacheBlocksEvent[] = [];
    let seen = 100;
    const r = new CacheRecorder(
      (ev) => applied.push(ev),
      () => seen++,
      null,
    );
    r.record('m', 'w1', [11, 12, 13], 0);
    r.record('m', 'w2', [11, 12, 13, 14], 2);
    r.record('m', 'w1', [11, 12, 13], 3);
    expect(r.pending).toBe(3);
    expect(applied).toHaveLength(0);
    expect(r.flush()).toBe(3);
    expect(r.pending).toBe(0);
    expect(applied).toEqual([
      { kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 0, hashes: [11, 12, 13], seen: 100, from: 0 },
      { kind: 'cache.blocks', model: 'm', worker: 'w2', anchor: 12, hashes: [13, 14], seen: 101, from: 2 },
      { kind: 'cache.blocks', model: 'm', worker: 'w1', anchor: 13, hashes: [], seen: 102, from: 3 },
    ]);
    expect(r.flush()).toBe(0);
  });

  it('schedules one batch per burst and applies it later (setImmediate by default)', async () => {
    const idx = new CacheIndex();
    const r = new CacheRecorder(
      (ev) => idx.apply(ev),
      () => 1024 * 1000,
    );
    r.record('m', 'w1', [1, 2], 0);
    r.record('m', 'w2', [1], 0);
    expect(idx.size()).toBe(0); // not inside the decision
    await new Promise((resolve) => setImmediate(resolve));
    expect(r.pending).toBe(0);
    expect(idx.match('m', [1, 2]).depths).toEqual(
      new Map([
        ['w1', 2],
        ['w2', 1],
      ]),
    );
    let scheduled = 0;
    const manual = new CacheRecorder(
      (ev) => idx.apply(ev),
      () => 0,
      () => scheduled++,
    );
    manual.record('m', 'w3', [5], 0);
    manual.record('m', 'w3', [6], 0);
    expect(scheduled).toBe(1);
  });
});
