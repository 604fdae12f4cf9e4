/**
 * Hostile and careless inference requests against real `smg launch` and `smg mock-worker`
 * processes, as they were first found from outside: a distinct model string per request (metric
 * series), arrays nested thousands deep (stack overflow), and `model` values that are not
 * strings or that name Object.prototype members.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  startGatewayProc,
  startMockFleet,
  stopAll,
  type GatewayProc,
  type MockFleetProc,
} from '../testing/processes.js';

let mocks: MockFleetProc;
let gw: GatewayProc;
let client: OpenAI;

const KNOWN_LABELS = new Set(['known-model', 'fast', 'other', 'default']);

beforeAll(async () => {
  mocks = await startMockFleet(1, ['--model', 'known-model', '--output-tokens', '2']);
  gw = await startGatewayProc([
    '--worker-urls',
    mocks.urls[0],
    '--model-alias',
    'fast=known-model',
    // cache_aware extracts routing text, the path that recursed into nested prompts
    '--policy',
    'cache_aware',
    '--health-check-interval-secs',
    '1',
  ]);
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await stopAll();
});

async function metricsText(): Promise<string> {
  const res = await fetch(`${gw.metricsUrl}/metrics`);
  return res.text();
}

/** the `model` label values of the request-level families */
function modelLabels(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/^smg_(?:router|worker_selection)\w*\{[^}]*\bmodel="([^"]*)"/gm))
    out.add(m[1]);
  return out;
}

function post(path: string, body: string): Promise<Response> {
  return fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
}

const chat = (model: string, stream: boolean) =>
  post(
    '/v1/chat/completions',
    JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'hello' }] }),
  );

describe('a distinct model string per request', () => {
  it('3,000 distinct models leave /metrics bounded: known models keep their label, the rest are `other`', async () => {
    // one request of every kind first, so every series that can exist does
    for (const model of ['known-model', 'fast', 'never-registered', '']) {
      for (const stream of [false, true]) {
        const res = await chat(model, stream);
        expect(res.status).toBe(200);
        await res.text();
      }
    }
    const before = await metricsText();
    const beforeLines = before.split('\n').length;

    const statuses = new Map<number, number>();
    const CONCURRENCY = 24;
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < 3_000) {
          const i = next++;
          const res = await chat(`client-model-${i}`, i % 2 === 0);
          await res.text();
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        }
      }),
    );
    expect(Object.fromEntries(statuses)).toEqual({ 200: 3_000 });

    const after = await metricsText();
    const labels = modelLabels(after);
    expect([...labels].filter((l) => !KNOWN_LABELS.has(l))).toEqual([]);
    expect(labels.has('other')).toBe(true);
    expect(labels.has('known-model')).toBe(true);
    // before the fix each model added ~150 lines (37.8 MB for 3,000); now only values change,
    // and the few lines that may appear meanwhile (a new status, a runtime series) stay few
    expect(after.split('\n').length - beforeLines).toBeLessThan(50);
  }, 120_000);
});

describe('arrays nested thousands deep', () => {
  const deep = (n: number) => '['.repeat(n) + '"x"' + ']'.repeat(n);
  const cases: [string, string][] = [
    ['/v1/completions', `{"model":"known-model","prompt":${deep(8_000)}}`],
    ['/v1/completions', `{"model":"known-model","prompt":[1,${deep(8_000)}]}`],
    ['/generate', `{"text":${deep(8_000)}}`],
    ['/v1/embeddings', `{"model":"known-model","input":${deep(8_000)}}`],
    ['/v1/responses', `{"model":"known-model","input":${deep(8_000)}}`],
    ['/v1/chat/completions', `{"model":"known-model","messages":[{"role":"user","content":${deep(8_000)}}]}`],
  ];
  it.each(cases)('%s answers 400 invalid_request_body with no internal text', async (path, body) => {
    const res = await post(path, body);
    const text = await res.text();
    expect(res.status).toBe(400);
    expect(res.headers.get('x-smg-error-code')).toBe('invalid_request_body');
    expect(JSON.parse(text)).toEqual({
      error: {
        type: 'Bad Request',
        code: 'invalid_request_body',
        message: 'Invalid JSON body: the body nests more than 128 levels deep',
        param: null,
      },
    });
  });

  it('the gateway logged no stack overflow and still serves', async () => {
    expect(gw.output()).not.toMatch(/RangeError|Maximum call stack/);
    const r = await client.chat.completions.create({
      model: 'known-model',
      messages: [{ role: 'user', content: 'still there?' }],
    });
    expect(r.choices[0].message.content).toBeTruthy();
  });
});

describe('the type and name of `model`', () => {
  it.each([
    ['a number', '42', 'number'],
    ['null', 'null', 'null'],
    ['an object', '{"id":"known-model"}', 'object'],
    ['a list', '["known-model"]', 'object'],
  ])('%s is a 400, not an absent model', async (_what, model, type) => {
    const res = await post(
      '/v1/chat/completions',
      `{"model":${model},"messages":[{"role":"user","content":"x"}]}`,
    );
    expect(res.status).toBe(400);
    expect(res.headers.get('x-smg-error-code')).toBe('invalid_request');
    const body = (await res.json()) as { error: { message: string } };
    expect(body.error.message).toBe(`"model" must be a string, got ${type}`);
  });

  it('Object.prototype member names are ordinary model names (official client)', async () => {
    for (const model of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
      const r = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] });
      expect(r.model).toBe(model);
    }
    const labels = modelLabels(await metricsText());
    expect([...labels].filter((l) => !KNOWN_LABELS.has(l))).toEqual([]);
  });

  it('a wrong type through the official client is a BadRequestError with the SMG code', async () => {
    const err = await client.chat.completions
      .create({ model: 7 as unknown as string, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).code).toBe('invalid_request');
  });
});
