import { describe, expect, it } from 'vitest';
import { createPassthroughPolicy } from './passthrough.js';
import { makeContext, makeRequest, makeWorkers, testParams } from './testing.js';

describe('passthrough', () => {
  it('always picks the first candidate', () => {
    const p = createPassthroughPolicy(testParams(), makeContext());
    const workers = makeWorkers(3);
    for (let i = 0; i < 5; i++) expect(p.select(workers, makeRequest())).toBe(workers[0]);
    expect(p.select([], makeRequest())).toBeUndefined();
  });
});
