import { describe, expect, it } from 'vitest';
import { LARGE_BODY_BYTES, LargeBodyReclaimer } from './large-body-gc.js';

describe('LargeBodyReclaimer', () => {
  it('asks for a collection once enough large bodies were released, never for small ones, at most every 250 ms', () => {
    let t = 1_000;
    const r = new LargeBodyReclaimer(16 * LARGE_BODY_BYTES, () => t);
    for (let i = 0; i < 1_000; i++) r.bodyReleased(LARGE_BODY_BYTES - 1);
    expect(r.runs).toBe(0);
    for (let i = 0; i < 15; i++) r.bodyReleased(LARGE_BODY_BYTES);
    expect(r.runs).toBe(0);
    r.bodyReleased(LARGE_BODY_BYTES);
    expect(r.runs).toBe(1);
    // enough again, but too soon: it waits until the interval has passed
    r.bodyReleased(16 * LARGE_BODY_BYTES);
    expect(r.runs).toBe(1);
    t += 300;
    r.bodyReleased(LARGE_BODY_BYTES);
    expect(r.runs).toBe(2);
  });
});
