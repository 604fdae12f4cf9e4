/** Routing-text extraction never throws, whatever shape or depth a prompt has. */
import { describe, expect, it } from 'vitest';
import { extractRoutingText } from './routing-text.js';

const nested = (depth: number, leaf: unknown): unknown => {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
};

describe('extractRoutingText', () => {
  it('joins the prompt shapes SMG accepts: a string, strings, token ids, lists of token ids', () => {
    expect(extractRoutingText('completions', { prompt: 'a b' })).toBe('a b');
    expect(extractRoutingText('completions', { prompt: ['a', 'b'] })).toBe('a b');
    expect(extractRoutingText('generate', { input_ids: [1, 2, 3] })).toBe('1 2 3');
    expect(extractRoutingText('embeddings', { input: [[1, 2], [3]] })).toBe('1 2 3');
  });

  it('ignores lists nested deeper than a prompt can be, without recursing into them', () => {
    for (const depth of [3, 100, 100_000]) {
      expect(extractRoutingText('completions', { prompt: nested(depth, 'x') })).toBe('');
      expect(extractRoutingText('generate', { text: nested(depth, 'x') })).toBe('');
    }
    // a token-id list with a list inside is not joined (join() would recurse into it)
    expect(extractRoutingText('completions', { prompt: [1, nested(100_000, 2)] })).toBe('');
    expect(extractRoutingText('completions', { prompt: ['a', nested(100_000, 'x'), 'b'] })).toBe('a b');
  });
});
