import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Engine } from '../mock/engine.js';
import {
  chatPlan,
  completionPlan,
  embeddingPlan,
  generatePlan,
  messagesPlan,
  responsesPlan,
  type Json,
  type PlanBuilder,
} from '../mock/inference.js';
import { mockWorkerOptions } from '../mock/options.js';
import { MAX_PARSED_BODY, UsageObserver, type UsageResult } from './usage.js';

/** the mock engine's exact response body, as the events it writes (one string per write) */
function render(
  plan: PlanBuilder,
  body: Json,
  outputTokens = 5,
): { events: string[]; prompt: number; cached: number } {
  const engine = new Engine(mockWorkerOptions({ outputTokens }));
  // warm the prefix cache so cached_tokens is non-zero on the measured request
  engine.commit(plan(engine, body, performance.now()).prefill);
  const p = plan(engine, body, performance.now());
  const events: string[] = [];
  const sink = { write: (s: string) => events.push(s) };
  if (p.stream) {
    p.head(sink);
    for (let i = 0; i < p.n; i++) p.token(i, sink);
    p.tail(sink);
  } else events.push(p.body());
  return { events, prompt: p.prefill.promptTokens, cached: p.prefill.cachedTokens };
}

/** feeds `parts` one per millisecond starting at t=10 (request sent at t=0) */
function observe(streaming: boolean, parts: (string | Buffer)[]): UsageResult {
  const o = new UsageObserver(streaming, 0);
  parts.forEach((p, i) => o.onChunk(typeof p === 'string' ? Buffer.from(p) : p, 10 + i));
  return o.finish(10 + parts.length);
}

const longPrompt = 'You are a helpful assistant. '.repeat(20);
const chatBody = (extra: Json = {}): Json => ({
  model: 'm',
  messages: [{ role: 'user', content: longPrompt }],
  ...extra,
});

describe('UsageObserver, streams from the mock engine', () => {
  it('OpenAI chat with include_usage: counts from the usage chunk, TTFT from the first event', () => {
    const r = render(chatPlan, chatBody({ stream: true, stream_options: { include_usage: true } }));
    expect(r.cached).toBeGreaterThan(0);
    const u = observe(true, r.events);
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 5, cachedTokens: r.cached });
    expect(u.ttftSec).toBeCloseTo(0.01);
    // events: role (t=10), 5 tokens, finish (t=16); the usage chunk and [DONE] are not tokens
    expect(u.generationSec).toBeCloseTo(0.006);
    expect(u.tpotSec).toBeCloseTo(0.006 / 4);
  });

  it('OpenAI chat without usage: no counts, TPOT over the token events', () => {
    const r = render(chatPlan, chatBody({ stream: true }));
    const u = observe(true, r.events);
    expect(u.promptTokens).toBeUndefined();
    expect(u.completionTokens).toBeUndefined();
    // 7 token-bearing events (role, 5 tokens, finish) stand in for the token count
    expect(u.tpotSec).toBeCloseTo(0.006 / 6);
  });

  it('OpenAI completions with several prompts', () => {
    const r = render(completionPlan, {
      model: 'm',
      prompt: [longPrompt, longPrompt + 'x'],
      stream: true,
      stream_options: { include_usage: true },
    });
    const u = observe(true, r.events);
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 10, cachedTokens: r.cached });
  });

  it('SGLang /generate: the last meta_info wins', () => {
    const r = render(generatePlan, {
      text: longPrompt,
      stream: true,
      sampling_params: { max_new_tokens: 4 },
    });
    const u = observe(true, r.events);
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 4, cachedTokens: r.cached });
    expect(u.ttftSec).toBeCloseTo(0.01);
  });

  it('SGLang /generate batch: the last meta_info of each index, summed', () => {
    const r = render(generatePlan, { text: [longPrompt, 'another prompt'], stream: true }, 3);
    const u = observe(true, r.events);
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 6, cachedTokens: r.cached });
  });

  it('Anthropic messages: input from message_start, output from message_delta', () => {
    const r = render(messagesPlan, { ...chatBody(), max_tokens: 100, stream: true });
    const u = observe(true, r.events);
    // Anthropic's input_tokens excludes cache reads; the prompt is both
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 5, cachedTokens: r.cached });
    // message_start and content_block_start come before the first delta (t=12)
    expect(u.ttftSec).toBeCloseTo(0.012);
  });

  it('OpenAI Responses: usage from response.completed, tokens from the deltas', () => {
    const r = render(responsesPlan, { model: 'm', input: longPrompt, stream: true });
    const u = observe(true, r.events);
    expect(u).toMatchObject({ promptTokens: r.prompt, completionTokens: 5, cachedTokens: r.cached });
  });

  it('is the same whatever the chunking (every split point of a stream)', () => {
    const streams = [
      render(chatPlan, chatBody({ stream: true, stream_options: { include_usage: true } }), 3),
      render(generatePlan, { text: [longPrompt, 'b'], stream: true }, 2),
      render(messagesPlan, { ...chatBody(), max_tokens: 100, stream: true }, 2),
    ];
    for (const s of streams) {
      const whole = Buffer.from(s.events.join(''));
      const expected = observe(true, [whole]);
      expect(expected.completionTokens).toBeGreaterThan(0);
      const counts = (u: UsageResult) => [u.promptTokens, u.completionTokens, u.cachedTokens];
      for (let cut = 1; cut < whole.length; cut++) {
        const u = observe(true, [whole.subarray(0, cut), whole.subarray(cut)]);
        expect(counts(u), `cut at ${cut}`).toEqual(counts(expected));
      }
      fc.assert(
        fc.property(
          fc.uniqueArray(fc.integer({ min: 1, max: whole.length - 1 }), { maxLength: 40 }),
          (cuts) => {
            const at = [0, ...cuts.sort((a, b) => a - b), whole.length];
            const parts = at.slice(1).map((end, i) => whole.subarray(at[i], end));
            const u = observe(true, parts);
            expect(counts(u)).toEqual(counts(expected));
          },
        ),
        { numRuns: 100 },
      );
    }
  });

  it('handles CRLF framing, comments, ids and a missing final blank line', () => {
    const usage = '{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}';
    const u = observe(true, [
      ': keep-alive\r\n\r\n',
      'id: 1\r\ndata: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\n',
      'data: {"choices":[{"delta":{"content":"b"}}]}\r\n\r\n',
      `data: ${usage}\r\n\r\ndata: [DONE]`,
    ]);
    expect(u).toMatchObject({ promptTokens: 7, completionTokens: 2 });
    expect(u.ttftSec).toBeCloseTo(0.011);
    expect(u.generationSec).toBeCloseTo(0.001);
  });

  it('ignores "usage": null on every chunk (SGLang OpenAI streams) and usage inside strings', () => {
    const u = observe(true, [
      'data: {"choices":[{"delta":{"content":"the \\"usage\\": {} text"}}],"usage":null}\n\n',
      'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n',
      'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}}\n\n',
    ]);
    expect(u).toMatchObject({ promptTokens: 3, completionTokens: 2, cachedTokens: 1 });
  });

  it('counts an oversized event without buffering it, then carries on', () => {
    const huge = 'data: {"x":"' + 'y'.repeat(1024 * 1024 + 10) + '"}\n\n';
    const u = observe(true, [
      huge.slice(0, 600_000),
      huge.slice(600_000) + 'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":4}}\n\n',
    ]);
    expect(u).toMatchObject({ promptTokens: 1, completionTokens: 4 });
    expect(u.ttftSec).toBeCloseTo(0.01);
  });

  it('survives garbage', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 20 }), fc.boolean(), (parts, s) => {
        const o = new UsageObserver(s, 0);
        for (const p of parts) o.onChunk(Buffer.from(p), 1);
        o.finish(2);
      }),
      { numRuns: 300 },
    );
  });
});

describe('UsageObserver, non-streaming bodies', () => {
  it('OpenAI chat', () => {
    const r = render(chatPlan, chatBody());
    const body = r.events[0];
    const u = observe(false, [body.slice(0, 10), body.slice(10)]);
    expect(u).toEqual({ promptTokens: r.prompt, completionTokens: 5, cachedTokens: r.cached });
  });

  it('Anthropic messages', () => {
    const r = render(messagesPlan, { ...chatBody(), max_tokens: 100 });
    expect(observe(false, r.events)).toEqual({
      promptTokens: r.prompt,
      completionTokens: 5,
      cachedTokens: r.cached,
    });
  });

  it('SGLang /generate, single and batch', () => {
    const one = render(generatePlan, { text: longPrompt });
    expect(observe(false, one.events)).toEqual({
      promptTokens: one.prompt,
      completionTokens: 5,
      cachedTokens: one.cached,
    });
    const batch = render(generatePlan, { text: [longPrompt, 'x y z'] });
    expect(observe(false, batch.events)).toEqual({
      promptTokens: batch.prompt,
      completionTokens: 10,
      cachedTokens: batch.cached,
    });
  });

  it('Responses and embeddings', () => {
    const resp = render(responsesPlan, { model: 'm', input: longPrompt });
    expect(observe(false, resp.events)).toMatchObject({ promptTokens: resp.prompt, completionTokens: 5 });
    const emb = render(embeddingPlan, { model: 'm', input: 'hello world' });
    expect(observe(false, emb.events)).toEqual({ promptTokens: emb.prompt });
  });

  it('does not parse bodies over 1 MiB, nor non-JSON', () => {
    const big = JSON.stringify({ pad: 'x'.repeat(MAX_PARSED_BODY), usage: { prompt_tokens: 1 } });
    expect(observe(false, [big])).toEqual({});
    expect(observe(false, ['not json'])).toEqual({});
    expect(observe(false, [])).toEqual({});
  });

  it('finish is idempotent and later chunks are ignored', () => {
    const o = new UsageObserver(false, 0);
    o.onChunk(Buffer.from('{"usage":{"prompt_tokens":2}}'), 1);
    const a = o.finish(2);
    o.onChunk(Buffer.from('garbage'), 3);
    expect(o.finish(4)).toBe(a);
    expect(a).toEqual({ promptTokens: 2 });
  });
});
