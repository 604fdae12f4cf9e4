import { describe, expect, it } from 'vitest';
import { seededRandom } from '../testing/prng.js';
import { LargeString, largeStringOf, parseWithLargeStrings } from './large-strings.js';
import { extractRoutingText, MAX_ROUTING_TEXT_CHARS } from './routing-text.js';

/** every run tests the same documents */
const rng = seededRandom;

const ALPHABET = ['a', 'b', ' ', 'é', '中', '😀', '"', '\\', '\n', '\t', '\u0001', '/', '\u2028'];

function randomString(r: () => number, max: number): string {
  const n = Math.floor(r() * max);
  let s = '';
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(r() * ALPHABET.length)];
  return s;
}

function randomValue(r: () => number, depth: number): unknown {
  const k = r();
  if (depth > 3 || k < 0.35) return randomString(r, 60);
  if (k < 0.45) return Math.floor(r() * 1e6) / 100;
  if (k < 0.5) return r() < 0.5 ? null : r() < 0.5;
  if (k < 0.75) return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = 0, n = Math.floor(r() * 4); i < n; i++) o[randomString(r, 6)] = randomValue(r, depth + 1);
  return o;
}

/** the text as chunks of random sizes (1 byte to 40), as a socket could deliver it */
function chunked(text: string, r: () => number): Buffer[] {
  const bytes = Buffer.from(text);
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length;) {
    const n = 1 + Math.floor(r() * 40);
    out.push(bytes.subarray(i, i + n));
    i += n;
  }
  return out;
}

/** the value with every placeholder replaced by its whole string */
function materialize(v: unknown, large: ReadonlyMap<string, LargeString>): unknown {
  if (typeof v === 'string') return largeStringOf(large, v)?.full() ?? v;
  if (Array.isArray(v)) return v.map((x) => materialize(x, large));
  if (v !== null && typeof v === 'object') {
    // keys are strings too (routing never reads a long one, but the document is the same)
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => [largeStringOf(large, k)?.full() ?? k, materialize(x, large)]),
    );
  }
  return v;
}

function parseBoth(text: string, r: () => number, threshold: number): { ours: unknown; ok: boolean } {
  let ok = true;
  let ours: unknown;
  try {
    const p = parseWithLargeStrings(chunked(text, r), threshold);
    ours = p === undefined ? JSON.parse(text) : materialize(p.value, p.large);
  } catch {
    ok = false;
  }
  return { ours, ok };
}

describe('parseWithLargeStrings', () => {
  it('gives what JSON.parse gives, for 2,000 random documents in random chunks, small thresholds', () => {
    const r = rng(13);
    for (let i = 0; i < 2_000; i++) {
      const doc = randomValue(r, 0);
      const text = JSON.stringify(doc);
      const threshold = Math.floor(r() * 12);
      const { ours, ok } = parseBoth(text, r, threshold);
      expect(ok).toBe(true);
      expect(ours).toEqual(doc);
    }
  });

  it('refuses exactly what JSON.parse refuses, for 3,000 documents with one byte changed', () => {
    const r = rng(7);
    const bytes = [0x22, 0x5c, 0x01, 0x1f, 0x75, 0x7d, 0x5d, 0x2c, 0x3a, 0x20, 0x41, 0x30, 0x6e];
    let refused = 0;
    for (let i = 0; i < 3_000; i++) {
      const text = JSON.stringify(randomValue(r, 0));
      const buf = Buffer.from(text);
      if (buf.length === 0) continue;
      buf[Math.floor(r() * buf.length)] = bytes[Math.floor(r() * bytes.length)];
      const mutated = buf.toString('latin1');
      let expected = true;
      try {
        JSON.parse(mutated);
      } catch {
        expected = false;
      }
      const { ok } = parseBoth(mutated, r, Math.floor(r() * 8));
      expect(ok).toBe(expected);
      if (!ok) refused++;
    }
    expect(refused).toBeGreaterThan(500);
  });

  it('leaves large strings in the bytes and decodes a prefix without decoding the rest', () => {
    const prompt = 'x'.repeat(200_000) + '中😀"\\\n' + 'y'.repeat(100_000);
    const text = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: prompt }], stream: true });
    const p = parseWithLargeStrings(chunked(text, rng(1)));
    expect(p).toBeDefined();
    const { value, large } = p!;
    expect(large.size).toBe(1);
    const v = value as { model: string; stream: boolean; messages: { content: string }[] };
    expect(v.model).toBe('m');
    expect(v.stream).toBe(true);
    const big = largeStringOf(large, v.messages[0].content)!;
    expect(big.full()).toBe(prompt);
    for (const n of [0, 1, 1000, 200_000, 200_003, 200_006, 250_000, 400_000]) {
      const head = big.prefix(n);
      expect(prompt.startsWith(head)).toBe(true);
      expect(head.length).toBeGreaterThanOrEqual(Math.min(n, prompt.length));
    }
  });

  it('decodes escaped prefixes cut anywhere, \\uXXXX escapes included', () => {
    const prompt = Array.from({ length: 30_000 }, (_, i) => (i % 7 === 0 ? '\u0007é\\"' : 'ab')).join('');
    const text = JSON.stringify({ prompt });
    expect(text).toContain('\\u0007');
    const p = parseWithLargeStrings([Buffer.from(text)], 16)!;
    const big = largeStringOf(p.large, (p.value as { prompt: string }).prompt)!;
    for (let n = 0; n < 64; n++) {
      const head = big.prefix(n);
      expect(prompt.startsWith(head)).toBe(true);
      expect(head.length).toBeGreaterThanOrEqual(n);
    }
    expect(big.full()).toBe(prompt);
  });

  it('returns undefined when no string is large, and a client string that looks like a placeholder stays a string', () => {
    expect(parseWithLargeStrings([Buffer.from('{"a":"b"}')])).toBeUndefined();
    const text = JSON.stringify({ a: '\u0000x:0', b: 'z'.repeat(100_000) });
    const p = parseWithLargeStrings([Buffer.from(text)])!;
    expect((p.value as { a: string }).a).toBe('\u0000x:0');
    expect(largeStringOf(p.large, '\u0000x:0')).toBeUndefined();
  });

  it('routing text from a large body equals the text of the fully parsed body, cut at the same place', () => {
    const r = rng(3);
    for (const size of [70_000, MAX_ROUTING_TEXT_CHARS - 5, MAX_ROUTING_TEXT_CHARS + 10, 3_000_000]) {
      const body = {
        model: 'm',
        messages: [
          { role: 'system', content: 'sys ' + 'é'.repeat(size) },
          { role: 'user', content: [{ type: 'text', text: 'q'.repeat(size) }] },
        ],
      };
      const text = JSON.stringify(body);
      const p = parseWithLargeStrings(chunked(text, r))!;
      const lazy = extractRoutingText('chat', p.value as Record<string, unknown>, p.large);
      expect(lazy).toBe(extractRoutingText('chat', body));
      expect(lazy.length).toBeLessThanOrEqual(MAX_ROUTING_TEXT_CHARS);
    }
  });
});
