import net from 'node:net';
import OpenAI from 'openai';
import { fetch, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { EngineSettings } from './engine.js';
import { mockWorkerOptions, type MockWorkerOptions } from './options.js';
import { startMockWorkers, type MockFleet } from './server.js';

type Json = Record<string, unknown>;

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: null };
}
interface GenerateOut {
  text: string;
  output_ids: number[];
  index?: number;
  meta_info: {
    id: string;
    finish_reason: { type: string } | null;
    prompt_tokens: number;
    completion_tokens: number;
    cached_tokens: number;
    e2e_latency: number;
  };
}
interface Loads {
  version: string;
  dp_rank_count: number;
  loads: Record<string, number>[];
  aggregate: Record<string, number>;
}
interface Stats {
  requests: number;
  running: number;
  failures: number;
  prompt_tokens_total: number;
  cached_tokens_total: number;
  generation_tokens_total: number;
  cached_blocks: number;
}
interface RerankOut {
  results: { index: number; relevance_score: number; document?: { text: string } }[];
  usage: { prompt_tokens: number };
}
interface ClassifyOut {
  object: string;
  model: string;
  data: { index: number; label: string; probs: number[]; num_classes: number }[];
}
interface AnthropicMessage {
  id: string;
  type: string;
  content: { type: string; text: string }[];
  stop_reason: string;
  usage: { input_tokens: number; output_tokens: number; cache_read_input_tokens: number };
}
interface LastRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  raw_headers: string[];
  body_base64: string;
}
interface Reply<T> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: T;
}

function parse<T>(text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined as T;
  }
}

async function post<T = ErrorBody>(
  url: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Reply<T>> {
  const res = await request(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: parse<T>(text) };
}

async function get<T = ErrorBody>(url: string, path: string): Promise<Reply<T>> {
  const res = await request(url + path);
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: parse<T>(text) };
}

/** SSE events of a complete stream */
function sseEvents(text: string): { event?: string; data: string }[] {
  return text
    .split('\n\n')
    .filter((b) => b.trim() !== '')
    .map((block) => {
      let event: string | undefined;
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      return { event, data: data.join('\n') };
    });
}

/** the JSON data events of an OpenAI-style stream, and whether it ended with [DONE] */
function sseData<T>(text: string): { events: T[]; done: boolean } {
  const all = sseEvents(text).map((e) => e.data);
  const done = all.at(-1) === '[DONE]';
  if (done) all.pop();
  return { events: all.map((d) => JSON.parse(d) as T), done };
}

async function withFleet<T>(
  opts: Partial<MockWorkerOptions>,
  fn: (url: string, fleet: MockFleet) => Promise<T>,
) {
  const fleet = await startMockWorkers(mockWorkerOptions(opts));
  try {
    return await fn(fleet.workers[0].url, fleet);
  } finally {
    await fleet.close();
  }
}

async function waitFor(cond: () => Promise<boolean>, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const chat = (content: string, extra: Json = {}) => ({
  model: 'm',
  messages: [{ role: 'user', content }],
  ...extra,
});

let fleet: MockFleet;
let url: string;

beforeAll(async () => {
  fleet = await startMockWorkers(mockWorkerOptions({ port: 0 }));
  url = fleet.workers[0].url;
});

afterAll(async () => {
  await fleet.close();
});

beforeEach(async () => {
  await post(url, '/mock/faults', { reset: true });
  await post(url, '/flush_cache', '');
});

const stats = async (u: string) => (await get<Stats>(u, '/mock/stats')).json;

describe('engine info endpoints', () => {
  it('reports an ephemeral port and tags responses with x-mock-worker', async () => {
    expect(fleet.workers).toHaveLength(1);
    const { port } = fleet.workers[0];
    expect(port).toBeGreaterThan(0);
    expect(url).toBe(`http://127.0.0.1:${port}`);
    const h = await get(url, '/health');
    expect(h.status).toBe(200);
    expect(h.headers['x-mock-worker']).toBe(`127.0.0.1:${port}`);
  });

  it('serves models, server info, model info', async () => {
    const models = await get<Json>(url, '/v1/models');
    expect(models.json).toMatchObject({
      object: 'list',
      data: [
        { id: 'mock-model', object: 'model', owned_by: 'sglang', root: 'mock-model', max_model_len: 32768 },
      ],
    });
    const info = await get<Json>(url, '/get_server_info');
    expect(info.json).toMatchObject({
      model_path: 'mock-model',
      served_model_name: 'mock-model',
      tp_size: 1,
      dp_size: 1,
      max_total_num_tokens: 8192 * 16,
      version: 'mock',
    });
    expect(Array.isArray(info.json.internal_states)).toBe(true);
    const model = await get<Json>(url, '/get_model_info');
    expect(model.json).toMatchObject({
      model_path: 'mock-model',
      is_generation: true,
      served_model_name: 'mock-model',
    });
  });

  it('reports loads and Prometheus metrics that follow the cache', async () => {
    await post(url, '/v1/chat/completions', chat('x'.repeat(64 * 20))); // 320+ tokens = 20 blocks
    const loads = (await get<Loads>(url, '/v1/loads')).json;
    expect(loads).toMatchObject({ version: 'mock', dp_rank_count: 1 });
    const l = loads.loads[0];
    expect(l).toMatchObject({
      dp_rank: 0,
      num_running_reqs: 0,
      num_waiting_reqs: 0,
      num_waiting_uncached_tokens: 0,
    });
    expect(l.num_used_tokens).toBe(320);
    expect(l.token_usage).toBeGreaterThan(0);
    expect(l.token_usage).toBeLessThanOrEqual(1);
    expect(l.max_total_num_tokens).toBe(8192 * 16);
    expect(loads.aggregate.num_running_reqs).toBe(0);
    const metrics = await get(url, '/metrics');
    for (const name of [
      'num_running_reqs',
      'num_queue_reqs',
      'token_usage',
      'cache_hit_rate',
      'gen_throughput',
      'prompt_tokens_total',
      'generation_tokens_total',
    ]) {
      expect(metrics.text).toMatch(
        new RegExp(`^sglang:${name}\\{model_name="mock-model"\\} [0-9.e+-]+$`, 'm'),
      );
    }
    expect(metrics.text).toMatch(/^sglang:generation_tokens_total\{model_name="mock-model"\} [1-9]/m);
  });

  it('goes unhealthy on request', async () => {
    await post(url, '/mock/faults', { healthy: false });
    expect((await get(url, '/health')).status).toBe(503);
    await post(url, '/mock/faults', { healthy: true });
    expect((await get(url, '/health')).status).toBe(200);
  });
});

describe('inference over HTTP', () => {
  it('chat completion, non-streaming', async () => {
    const r = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat('hello'));
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    const b = r.json;
    expect(b.id).toMatch(/^chatcmpl-/);
    expect(b).toMatchObject({ object: 'chat.completion', model: 'm' });
    expect(b.choices[0]).toMatchObject({
      index: 0,
      message: { role: 'assistant' },
      finish_reason: 'stop',
      logprobs: null,
    });
    expect(b.choices[0].message.content?.split(' ')).toHaveLength(8);
    expect(b.usage).toEqual({
      prompt_tokens: 3, // "user\nhello\n" = 11 chars
      completion_tokens: 8,
      total_tokens: 11,
      prompt_tokens_details: { cached_tokens: 0 },
    });
    // deterministic
    const again = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat('hello'));
    expect(again.json.choices[0].message.content).toBe(b.choices[0].message.content);
    // max_completion_tokens lowers the output and finishes with length; content parts are text
    const short = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', {
      messages: [{ role: 'user', content: [{ type: 'text', text: 'hello' }] }],
      max_completion_tokens: 3,
    });
    expect(short.json.model).toBe('mock-model');
    expect(short.json.choices[0].finish_reason).toBe('length');
    expect(short.json.usage?.completion_tokens).toBe(3);
    expect(short.json.usage?.prompt_tokens).toBe(3);
  });

  it('chat completion, streaming', async () => {
    const res = await fetch(url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chat('hello', { stream: true, stream_options: { include_usage: true } })),
    });
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const { events, done } = sseData<OpenAI.ChatCompletionChunk>(await res.text());
    expect(done).toBe(true);
    expect(events).toHaveLength(11);
    expect(events[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const tokens = events.slice(1, 9);
    for (const t of tokens) {
      expect(t.object).toBe('chat.completion.chunk');
      expect(typeof t.choices[0].delta.content).toBe('string');
    }
    expect(events[9].choices[0]).toMatchObject({ delta: {}, finish_reason: 'stop' });
    expect(events[10]).toMatchObject({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 8 } });
    const nonStream = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat('hello'));
    expect(tokens.map((e) => e.choices[0].delta.content).join('')).toBe(
      nonStream.json.choices[0].message.content,
    );
  });

  it('completions: string, batch, token ids, stream', async () => {
    const one = await post<OpenAI.Completion>(url, '/v1/completions', {
      model: 'm',
      prompt: 'Say hi',
      max_tokens: 4,
    });
    expect(one.json).toMatchObject({ object: 'text_completion', model: 'm' });
    expect(one.json.id).toMatch(/^cmpl-/);
    expect(one.json.choices).toHaveLength(1);
    expect(one.json.choices[0]).toMatchObject({ index: 0, finish_reason: 'length' });
    expect(one.json.usage).toMatchObject({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 });
    const batch = await post<OpenAI.Completion>(url, '/v1/completions', { prompt: ['a', 'bb'] });
    expect(batch.json.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(batch.json.usage?.completion_tokens).toBe(16);
    const ids = await post<OpenAI.Completion>(url, '/v1/completions', { prompt: [1, 2, 3] });
    expect(ids.json.usage?.prompt_tokens).toBe(3);
    const s = await post(url, '/v1/completions', { prompt: 'x', stream: true, max_tokens: 2 });
    const { events, done } = sseData<OpenAI.Completion>(s.text);
    expect(done).toBe(true);
    expect(events.map((e) => e.choices[0].finish_reason)).toEqual([null, null, 'length']);
  });

  it('embeddings: float and base64', async () => {
    const f = await post<OpenAI.CreateEmbeddingResponse>(url, '/v1/embeddings', {
      model: 'e',
      input: ['a', 'b'],
    });
    expect(f.json).toMatchObject({
      object: 'list',
      model: 'e',
      usage: { prompt_tokens: 2, total_tokens: 2 },
    });
    expect(f.json.data).toHaveLength(2);
    expect(f.json.data[0]).toMatchObject({ object: 'embedding', index: 0 });
    expect(f.json.data[0].embedding).toHaveLength(16);
    const b = await post<{ data: { embedding: string }[] }>(url, '/v1/embeddings', {
      input: 'a',
      encoding_format: 'base64',
    });
    const buf = Buffer.from(b.json.data[0].embedding, 'base64');
    const decoded = Array.from({ length: buf.length / 4 }, (_, i) => buf.readFloatLE(i * 4));
    expect(decoded).toEqual(f.json.data[0].embedding.map((x) => Math.fround(x)));
    const dims = await post<OpenAI.CreateEmbeddingResponse>(url, '/v1/embeddings', {
      input: 'a',
      dimensions: 4,
    });
    expect(dims.json.data[0].embedding).toHaveLength(4);
  });

  it('SGLang /generate: text, input_ids, batch, stream', async () => {
    const g = await post<GenerateOut>(url, '/generate', {
      text: 'hello',
      sampling_params: { max_new_tokens: 3 },
    });
    expect(g.json.text.split(' ')).toHaveLength(3);
    expect(g.json.output_ids).toHaveLength(3);
    expect(g.json.meta_info).toMatchObject({
      finish_reason: { type: 'length' },
      prompt_tokens: 2,
      completion_tokens: 3,
      cached_tokens: 0,
    });
    expect(typeof g.json.meta_info.e2e_latency).toBe('number');
    const ids = await post<GenerateOut>(url, '/generate', { input_ids: [5, 6, 7, 8] });
    expect(ids.json.meta_info).toMatchObject({
      prompt_tokens: 4,
      completion_tokens: 8,
      finish_reason: { type: 'stop' },
    });
    const batch = await post<GenerateOut[]>(url, '/generate', { text: ['a', 'b'] });
    expect(batch.json).toHaveLength(2);
    const s = await post(url, '/generate', {
      text: 'hello',
      stream: true,
      sampling_params: { max_new_tokens: 3 },
    });
    const { events, done } = sseData<GenerateOut>(s.text);
    expect(done).toBe(true);
    expect(events).toHaveLength(3);
    expect(events[2].text).toBe(g.json.text); // cumulative
    expect(events[0].meta_info.finish_reason).toBeNull();
    expect(events[2].meta_info).toMatchObject({ finish_reason: { type: 'length' }, completion_tokens: 3 });
  });

  it('rerank and classify', async () => {
    const r = await post<RerankOut>(url, '/v1/rerank', {
      query: 'red fox',
      documents: ['blue sky', 'a red fox', 'fox'],
    });
    expect(r.status).toBe(200);
    expect(r.json.results).toHaveLength(3);
    expect(r.json.results[0]).toMatchObject({ index: 1, document: { text: 'a red fox' } });
    const scores = r.json.results.map((x) => x.relevance_score);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    expect(r.json.usage.prompt_tokens).toBeGreaterThan(0);
    const top = await post<RerankOut>(url, '/v1/rerank', {
      query: 'q',
      documents: ['a', 'b'],
      top_n: 1,
      return_documents: false,
    });
    expect(top.json.results).toHaveLength(1);
    expect(top.json.results[0].document).toBeUndefined();
    const c = await post<ClassifyOut>(url, '/v1/classify', { model: 'c', input: ['good', 'bad'] });
    expect(c.json).toMatchObject({ object: 'list', model: 'c' });
    expect(c.json.data).toHaveLength(2);
    expect(c.json.data[1]).toMatchObject({ index: 1, num_classes: 2 });
    expect(c.json.data[0].probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(c.json.data[0].label).toMatch(/^LABEL_[01]$/);
  });

  it('Anthropic /v1/messages, plain and streaming', async () => {
    const m = await post<AnthropicMessage>(url, '/v1/messages', {
      ...chat('hi'),
      model: 'claude',
      max_tokens: 2,
      system: 'be brief',
    });
    expect(m.json).toMatchObject({
      type: 'message',
      role: 'assistant',
      model: 'claude',
      stop_reason: 'max_tokens',
      usage: { output_tokens: 2, cache_read_input_tokens: 0 },
    });
    expect(m.json.id).toMatch(/^msg_/);
    expect(m.json.content[0].type).toBe('text');
    const s = await post(url, '/v1/messages', { ...chat('hi'), stream: true, max_tokens: 2 });
    expect(sseEvents(s.text).map((e) => e.event)).toEqual([
      'message_start',
      'content_block_start',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
  });

  it('/v1/responses, plain and streaming', async () => {
    const r = await post<OpenAI.Responses.Response>(url, '/v1/responses', {
      model: 'm',
      input: 'hello',
      max_output_tokens: 3,
    });
    expect(r.json).toMatchObject({ object: 'response', status: 'completed', model: 'm' });
    expect(r.json.id).toMatch(/^resp_/);
    expect(r.json.output[0]).toMatchObject({
      type: 'message',
      role: 'assistant',
      content: [{ type: 'output_text' }],
    });
    expect(r.json.usage).toMatchObject({ output_tokens: 3 });
    expect(r.json.usage?.total_tokens).toBe((r.json.usage?.input_tokens ?? 0) + 3);
    const items = await post(url, '/v1/responses', {
      input: [{ role: 'user', content: [{ type: 'input_text', text: 'hi' }] }],
      instructions: 'x',
    });
    expect(items.status).toBe(200);
    const s = await post(url, '/v1/responses', { input: 'hello', stream: true, max_output_tokens: 2 });
    const names = sseEvents(s.text).map((e) => e.event);
    expect(names[0]).toBe('response.created');
    expect(names.filter((n) => n === 'response.output_text.delta')).toHaveLength(2);
    expect(names.at(-1)).toBe('response.completed');
  });
});

describe('the official openai SDK', () => {
  const client = () => new OpenAI({ baseURL: url + '/v1', apiKey: 'x', maxRetries: 0 });

  it('chat, streaming chat with usage, completions, embeddings, models, responses', async () => {
    const c = client();
    const r = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hello' }] });
    expect(r.choices[0].message.content).toBeTruthy();
    expect(r.usage?.prompt_tokens_details?.cached_tokens).toBe(0);

    const stream = await c.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'hello' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(r.choices[0].message.content);
    expect(usage?.completion_tokens).toBe(8);

    const comp = await c.completions.create({ model: 'm', prompt: 'hi', max_tokens: 2 });
    expect(comp.choices[0].finish_reason).toBe('length');

    const emb = await c.embeddings.create({ model: 'e', input: 'hello' }); // base64 under the hood
    expect(emb.data[0].embedding).toHaveLength(16);
    expect(Math.hypot(...emb.data[0].embedding)).toBeCloseTo(1, 4);
    const embF = await c.embeddings.create({ model: 'e', input: 'hello', encoding_format: 'float' });
    expect(embF.data[0].embedding.map(Math.fround)).toEqual(Array.from(emb.data[0].embedding));

    const models = await c.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['mock-model']);

    const resp = await c.responses.create({ model: 'm', input: 'hello' });
    expect(resp.output_text.split(' ')).toHaveLength(8);
  });

  it('surfaces errors as APIError', async () => {
    await post(url, '/mock/faults', { fail_rate: 1, fail_status: 503 });
    await expect(
      client().chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toMatchObject({ status: 503, message: expect.stringContaining('injected failure') });
  });
});

describe('prefix cache and timing', () => {
  it('a repeated long prompt is served from the cache; flush_cache empties it', async () => {
    const prompt = 'The quick brown fox. '.repeat(60); // 1260 chars
    const cachedOf = (r: Reply<OpenAI.ChatCompletion>) => r.json.usage?.prompt_tokens_details?.cached_tokens;
    const first = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat(prompt));
    expect(cachedOf(first)).toBe(0);
    const second = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat(prompt));
    const cached = cachedOf(second) ?? 0;
    expect(cached).toBeGreaterThan(0);
    expect(cached).toBe(Math.floor((second.json.usage?.prompt_tokens ?? 0) / 16) * 16);
    // a follow-up turn extends the prefix
    const turn2 = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', {
      messages: [
        { role: 'user', content: prompt },
        { role: 'assistant', content: 'ok' },
        { role: 'user', content: 'more' },
      ],
    });
    expect(cachedOf(turn2)).toBeGreaterThan(0);
    // the same tokens through another API hit the same cache
    const gen = await post<GenerateOut>(url, '/generate', { text: 'user\n' + prompt + '\n' });
    expect(gen.json.meta_info.cached_tokens).toBe(cached);
    const s = await stats(url);
    expect(s.cached_tokens_total).toBeGreaterThan(0);
    expect(s.prompt_tokens_total).toBeGreaterThan(s.cached_tokens_total);
    expect((await post(url, '/flush_cache', '')).status).toBe(200);
    const third = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat(prompt));
    expect(cachedOf(third)).toBe(0);
  });

  it('TTFT grows with uncached tokens at --prefill-tokens-per-s', async () => {
    await withFleet({ prefillTokensPerS: 2000 }, async (u) => {
      const prompt = 'y'.repeat(1600); // 400 tokens (+ role framing): >= 200 ms uncached
      const ttfb = async () => {
        const t = performance.now();
        const res = await request(u + '/v1/chat/completions', {
          method: 'POST',
          body: JSON.stringify(chat(prompt, { stream: true })),
        });
        const dt = performance.now() - t;
        await res.body.text();
        return dt;
      };
      const cold = await ttfb();
      const warm = await ttfb();
      expect(cold).toBeGreaterThanOrEqual(150);
      expect(warm).toBeLessThan(cold / 2);
    });
  });

  it('honours ttft and itl; a non-stream response takes ttft + itl × tokens', async () => {
    await withFleet({ ttftMs: 40, itlMs: 15, outputTokens: 4 }, async (u) => {
      let t = performance.now();
      await post(u, '/v1/chat/completions', chat('hi'));
      expect(performance.now() - t).toBeGreaterThanOrEqual(40 + 15 * 4 - 5);
      t = performance.now();
      const res = await fetch(u + '/v1/chat/completions', {
        method: 'POST',
        body: JSON.stringify(chat('hi', { stream: true })),
      });
      const reader = res.body!.getReader();
      const arrivals: number[] = [];
      while (true) {
        const { done } = await reader.read();
        if (done) break;
        arrivals.push(performance.now() - t);
      }
      expect(arrivals[0]).toBeGreaterThanOrEqual(35);
      expect(arrivals.at(-1)! - arrivals[0]).toBeGreaterThanOrEqual(3 * 15 - 5);
    });
  });
});

describe('faults, bookkeeping, robustness', () => {
  it('rejects malformed requests with 4xx envelopes', async () => {
    const bad = await post(url, '/v1/chat/completions', '{nope');
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({ type: 'invalid_request_error', param: null, code: null });
    expect(bad.json.error.message).toMatch(/Invalid JSON/);
    for (const [path, field] of [
      ['/v1/chat/completions', 'messages'],
      ['/v1/completions', 'prompt'],
      ['/v1/embeddings', 'input'],
      ['/v1/messages', 'messages'],
      ['/v1/responses', 'input'],
    ]) {
      const r = await post(url, path, { model: 'm' });
      expect(r.status, path).toBe(400);
      expect(r.json.error.message).toContain(field);
      expect(r.json.error.type).toBe('invalid_request_error');
    }
    expect((await post(url, '/v1/chat/completions', [1, 2])).status).toBe(400);
    expect((await post(url, '/v1/chat/completions', chat('x', { max_tokens: 'ten' }))).status).toBe(400);
    expect((await post(url, '/v1/chat/completions', { messages: [null] })).status).toBe(400);
    expect((await post(url, '/generate', {})).status).toBe(400);
    expect((await post(url, '/v1/rerank', { query: 'q' })).status).toBe(400);
    const nf = await get(url, '/v2/nothing');
    expect(nf.status).toBe(404);
    expect(nf.json.error.message).toContain('/v2/nothing');
    const wrong = await get(url, '/v1/chat/completions');
    expect(wrong.status).toBe(405);
    expect(wrong.headers.allow).toBe('POST');
    expect((await post(url, '/mock/faults', { fail_rate: 2 })).status).toBe(400);
    expect((await post(url, '/mock/faults', { nonsense: 1 })).status).toBe(400);
  });

  it('survives garbage on the socket', async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const s = net.connect(fleet.workers[0].port, '127.0.0.1', () => s.write('NOT HTTP AT ALL\r\n\r\n'));
      let data = '';
      s.on('data', (d) => (data += d.toString()));
      s.on('close', () => resolve(data));
      s.on('error', reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    expect((await get(url, '/health')).status).toBe(200);
  });

  it('injects failures at the configured rate and status', async () => {
    const set = await post<EngineSettings>(url, '/mock/faults', { fail_rate: 1, fail_status: 429 });
    expect(set.json).toMatchObject({ fail_rate: 1, fail_status: 429 });
    const r = await post(url, '/v1/chat/completions', chat('x'));
    expect(r.status).toBe(429);
    expect(r.json.error).toMatchObject({ message: 'injected failure', type: 'server_error' });
    const reset = await post<EngineSettings>(url, '/mock/faults', { reset: true });
    expect(reset.json.fail_rate).toBe(0);
    expect((await post(url, '/v1/chat/completions', chat('x'))).status).toBe(200);
  });

  it('changes output_tokens at runtime', async () => {
    await post(url, '/mock/faults', { output_tokens: 2 });
    const r = await post<OpenAI.ChatCompletion>(url, '/v1/chat/completions', chat('x'));
    expect(r.json.usage?.completion_tokens).toBe(2);
    expect((await get<EngineSettings>(url, '/mock/faults')).json.output_tokens).toBe(2);
  });

  it('records the last inference request byte for byte', async () => {
    const raw = '{"model":"m",  "messages":[{"role":"user","content":"h\\u00e9"}]}';
    await post(url, '/v1/chat/completions?x=1', raw, { 'x-custom': 'yes' });
    await get(url, '/health');
    const last = (await get<LastRequest>(url, '/mock/last-request')).json;
    expect(last.method).toBe('POST');
    expect(last.path).toBe('/v1/chat/completions?x=1');
    expect(last.headers['x-custom']).toBe('yes');
    expect(last.raw_headers).toContain('x-custom');
    expect(Buffer.from(last.body_base64, 'base64').toString()).toBe(raw);
  });

  it('cuts a stream abruptly after fail_mid_stream_after tokens', async () => {
    await post(url, '/mock/faults', { fail_mid_stream_after: 3 });
    const res = await fetch(url + '/v1/chat/completions', {
      method: 'POST',
      body: JSON.stringify(chat('x', { stream: true })),
    });
    let got = '';
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    await expect(
      (async () => {
        while (true) {
          const { done, value } = await reader.read();
          if (done) break;
          got += dec.decode(value);
        }
      })(),
    ).rejects.toThrow();
    const { events, done } = sseData<OpenAI.ChatCompletionChunk>(got);
    expect(done).toBe(false);
    expect(events).toHaveLength(4); // role chunk + 3 tokens
    // non-streaming requests are unaffected
    expect((await post(url, '/v1/chat/completions', chat('x'))).status).toBe(200);
  });

  it('counts running requests and releases them when a client goes away', async () => {
    await withFleet({ itlMs: 50, outputTokens: 100 }, async (u) => {
      const ac = new AbortController();
      const res = await fetch(u + '/v1/chat/completions', {
        method: 'POST',
        body: JSON.stringify(chat('x', { stream: true })),
        signal: ac.signal,
      });
      await res.body!.getReader().read();
      expect((await stats(u)).running).toBe(1);
      expect((await get<Loads>(u, '/v1/loads')).json.loads[0].num_running_reqs).toBe(1);
      expect((await get(u, '/metrics')).text).toMatch(/^sglang:num_running_reqs\{[^}]*\} 1$/m);
      ac.abort();
      await waitFor(async () => (await stats(u)).running === 0);
      const after = await stats(u);
      expect(after.requests).toBe(1);
      expect(after.generation_tokens_total).toBeLessThan(20);
      // a non-stream request waiting for its tokens, too
      const ac2 = new AbortController();
      const pending = fetch(u + '/v1/chat/completions', {
        method: 'POST',
        body: JSON.stringify(chat('x')),
        signal: ac2.signal,
      }).catch(() => undefined);
      await waitFor(async () => (await stats(u)).running === 1);
      ac2.abort();
      await pending;
      await waitFor(async () => (await stats(u)).running === 0);
      expect((await stats(u)).generation_tokens_total).toBe(after.generation_tokens_total);
    });
  });

  it('runs independent workers, each with its own cache', async () => {
    await withFleet({ count: 2 }, async (_u, f) => {
      expect(f.workers).toHaveLength(2);
      const [a, b] = f.workers;
      expect(a.port).not.toBe(b.port);
      const prompt = 'z'.repeat(400);
      await post(a.url, '/v1/completions', { prompt });
      const onA = await post<OpenAI.Completion>(a.url, '/v1/completions', { prompt });
      const onB = await post<OpenAI.Completion>(b.url, '/v1/completions', { prompt });
      expect(onA.json.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThan(0);
      expect(onB.json.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
      expect(onB.headers['x-mock-worker']).toBe(`127.0.0.1:${b.port}`);
    });
  });
  it('with --api-key, refuses requests without the bearer key (401), except health, metrics and the test hooks', async () => {
    await withFleet({ apiKey: 'sk-engine' }, async (u) => {
      const denied = await post(u, '/v1/chat/completions', chat('hi'));
      expect(denied.status).toBe(401);
      expect(denied.json).toMatchObject({ error: { type: 'authentication_error' } });
      expect(
        (await post(u, '/v1/chat/completions', chat('hi'), { authorization: 'Bearer sk-wrong!' })).status,
      ).toBe(401);
      expect((await get(u, '/v1/models')).status).toBe(401);
      expect(
        (await post(u, '/v1/chat/completions', chat('hi'), { authorization: 'Bearer sk-engine' })).status,
      ).toBe(200);
      for (const path of ['/health', '/health_generate', '/metrics', '/mock/stats'])
        expect((await get(u, path)).status, path).toBe(200);
      expect(await stats(u)).toMatchObject({ requests: 1, unauthorized: 3 });
    });
  });
});
