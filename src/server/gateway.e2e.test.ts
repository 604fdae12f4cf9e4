/**
 * End to end, as a user sees it: real `smg launch` and `smg mock-worker` processes on loopback,
 * driven by the official openai SDK and plain HTTP.
 */
import http from 'node:http';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  freePort,
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type GatewayProc,
  type MockFleetProc,
} from '../testing/processes.js';

let mocks: MockFleetProc;
let gw: GatewayProc;
let client: OpenAI;

async function json(res: Response): Promise<Record<string, unknown>> {
  return (await res.json()) as Record<string, unknown>;
}

beforeAll(async () => {
  mocks = await startMockFleet(3, ['--model', 'mock-model', '--output-tokens', '6']);
  gw = await startGatewayProc([
    '--worker-urls',
    ...mocks.urls,
    '--policy',
    'cache_aware',
    '--model-alias',
    'my-alias=mock-model',
    '--health-check-interval-secs',
    '1',
  ]);
  // all three workers ready
  await waitFor(
    async () => ((await json(await fetch(`${gw.url}/readiness`))).healthy_workers as number) === 3,
    15_000,
    'three healthy workers',
  );
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'test-key', maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await stopAll();
});

describe('OpenAI API through the gateway (official SDK)', () => {
  it('chat completion, non-streaming', async () => {
    const r = await client.chat.completions.create({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'Hello there' }],
    });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0].message.content).toBeTruthy();
    expect(r.usage?.completion_tokens).toBe(6);
  });

  it('chat completion, streaming with usage', async () => {
    const stream = await client.chat.completions.create({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'Stream to me' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let chunks = 0;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      chunks++;
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(chunks).toBeGreaterThanOrEqual(6);
    expect(text.length).toBeGreaterThan(0);
    expect(usage?.completion_tokens).toBe(6);
  });

  it('completions', async () => {
    const r = await client.completions.create({ model: 'mock-model', prompt: 'Once upon a time' });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0].text.length).toBeGreaterThan(0);
  });

  it('embeddings', async () => {
    const r = await client.embeddings.create({ model: 'mock-model', input: ['a', 'b'] });
    expect(r.data).toHaveLength(2);
    expect(r.data[0].embedding.length).toBeGreaterThan(0);
  });

  it('models: aggregated from workers plus aliases', async () => {
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    expect(ids).toContain('mock-model');
    expect(ids).toContain('my-alias');
  });

  it('a model alias routes to the canonical model', async () => {
    const r = await client.chat.completions.create({
      model: 'my-alias',
      messages: [{ role: 'user', content: 'via alias' }],
    });
    expect(r.choices[0].message.content).toBeTruthy();
  });
});

describe('pass-through routes', () => {
  for (const [path, body] of [
    ['/generate', { text: 'hello', sampling_params: { max_new_tokens: 4 } }],
    ['/v1/rerank', { query: 'q', documents: ['a', 'b'] }],
    ['/v1/classify', { model: 'mock-model', input: 'text' }],
    ['/v1/responses', { model: 'mock-model', input: 'hi' }],
    ['/v1/messages', { model: 'mock-model', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }],
  ] as const) {
    it(`POST ${path}`, async () => {
      const res = await fetch(gw.url + path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-request-id')).toBeTruthy();
      await res.json();
    });
  }
});

describe('forwarding', () => {
  it('forwards the original body bytes and strips hop-by-hop headers', async () => {
    const raw =
      '{ "model" : "mock-model",\n  "messages":[{"role":"user","content":"bytes \\u00e9 ünïcode"}] ,"x_extra":1}';
    // node:http, because fetch refuses to send hop-by-hop headers at all
    const { status, headers: resHeaders } = await new Promise<{
      status: number;
      headers: http.IncomingHttpHeaders;
    }>((resolve, reject) => {
      const req = http.request(
        `${gw.url}/v1/chat/completions`,
        {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'x-custom': 'kept',
            'x-request-id': 'my-req-id-1',
            'proxy-authorization': 'secret',
            'keep-alive': 'timeout=5',
            connection: 'keep-alive, x-hop',
            'x-hop': 'listed in connection',
            te: 'trailers',
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
        },
      );
      req.on('error', reject);
      req.end(raw);
    });
    expect(status).toBe(200);
    expect(resHeaders['x-request-id']).toBe('my-req-id-1');
    const served = resHeaders['x-mock-worker'] as string | undefined;
    const worker = mocks.urls.find((u) => u.endsWith(served?.split(':').pop() ?? 'none'));
    expect(worker).toBeDefined();
    const last = await json(await fetch(`${worker}/mock/last-request`));
    expect(Buffer.from(last.body_base64 as string, 'base64').toString('utf8')).toBe(raw);
    const headers = last.headers as Record<string, string>;
    expect(headers['x-custom']).toBe('kept');
    expect(headers['x-request-id']).toBe('my-req-id-1');
    expect(headers['proxy-authorization']).toBeUndefined();
    expect(headers['keep-alive']).toBeUndefined();
    expect(headers['te']).toBeUndefined();
    expect(headers['x-hop']).toBeUndefined();
  });

  it('generates a request id with SMG prefixes when none is given', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'id?' }] }),
    });
    await res.arrayBuffer();
    expect(res.headers.get('x-request-id')).toMatch(/^chatcmpl-[A-Za-z0-9]{24}$/);
  });

  it('a client that disconnects mid-stream aborts the upstream request', async () => {
    const slow = await startMockFleet(1, ['--itl-ms', '200', '--output-tokens', '100']);
    const g = await startGatewayProc(['--worker-urls', ...slow.urls, '--policy', 'round_robin']);
    const ac = new AbortController();
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'mock-model',
        stream: true,
        messages: [{ role: 'user', content: 'long' }],
      }),
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    const during = await json(await fetch(`${slow.urls[0]}/mock/stats`));
    expect(during.running).toBe(1);
    ac.abort();
    await waitFor(
      async () => (await json(await fetch(`${slow.urls[0]}/mock/stats`))).running === 0,
      5000,
      'abort',
    );
    // the gateway's in-flight count went back to zero too
    await waitFor(
      async () => {
        const w = (await json(await fetch(`${g.url}/workers`))).workers as { load: number }[];
        return w[0].load === 0;
      },
      5000,
      'load released',
    );
    await g.stop();
    await slow.stop();
  });

  it('cache_aware keeps a multi-turn conversation on one worker', async () => {
    const system = 'You are a meticulous assistant. '.repeat(10);
    for (let conv = 0; conv < 4; conv++) {
      const messages: { role: 'system' | 'user' | 'assistant'; content: string }[] = [
        { role: 'system', content: system },
        {
          role: 'user',
          content: `Conversation ${conv}: ${'tell me about the weather in some city. '.repeat(5)}`,
        },
      ];
      const served = new Set<string>();
      for (let turn = 0; turn < 4; turn++) {
        const res = await fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'mock-model', messages }),
        });
        const body = (await res.json()) as { choices: { message: { content: string } }[] };
        served.add(res.headers.get('x-mock-worker') ?? '');
        messages.push({ role: 'assistant', content: body.choices[0].message.content });
        messages.push({
          role: 'user',
          content: `Follow-up ${turn} in conversation ${conv}, with more details please.`,
        });
      }
      expect(served.size).toBe(1);
    }
  });
});

describe('bad input', () => {
  it('malformed JSON → 400 in the OpenAI error envelope', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model": "mock-model", "messages": [',
    });
    expect(res.status).toBe(400);
    expect(res.headers.get('x-smg-error-code')).toBe('invalid_request_body');
    const body = (await res.json()) as {
      error: { type: string; code: string; message: string; param: null };
    };
    expect(body.error.type).toBe('Bad Request');
    expect(body.error.code).toBe('invalid_request_body');
    expect(body.error.param).toBeNull();
  });

  it('a JSON array or an empty body → 400', async () => {
    for (const body of ['[1,2]', '', 'null']) {
      const res = await fetch(`${gw.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(res.status).toBe(400);
      await res.arrayBuffer();
    }
  });

  it('unknown route → 404', async () => {
    const res = await fetch(`${gw.url}/v1/nope`);
    expect(res.status).toBe(404);
    const body = (await res.json()) as { error: { code: string } };
    expect(body.error.code).toBe('not_found');
  });

  it("a worker's 4xx is passed through untouched and is not a worker failure", async () => {
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'mock-model', not_messages: true }),
      });
      expect(res.status).toBe(400);
      const body = (await res.json()) as { error: { type: string } };
      expect(body.error.type).toBe('invalid_request_error'); // the worker's own envelope
      expect(res.headers.get('x-smg-error-code')).toBeNull();
    }
    const workers = (await json(await fetch(`${gw.url}/workers`))).workers as { is_healthy: boolean }[];
    expect(workers.every((w) => w.is_healthy)).toBe(true);
    const ok = await client.chat.completions.create({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'x' }],
    });
    expect(ok.choices).toHaveLength(1);
  });

  it('no healthy worker → 503 no_available_workers', async () => {
    const dead = await freePort();
    const g = await startGatewayProc(['--worker-urls', `http://127.0.0.1:${dead}`], { waitReady: false });
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(res.status).toBe(503);
    expect(res.headers.get('x-smg-error-code')).toBe('no_available_workers');
    const ready = await fetch(`${g.url}/readiness`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ status: 'not ready', reason: 'insufficient healthy workers' });
    await g.stop();
  });

  it('hostile input never crashes the process', async () => {
    const bodies: [string, string][] = [
      ['application/json', '\u0000\u0001\u0002'],
      ['text/plain', 'hello'],
      ['application/json', '{"model": 12, "messages": "not-an-array"}'],
      [
        'application/json',
        '{"model":"mock-model","messages":[{"role":"user","content":{"deep":[[[[1]]]]}}]}',
      ],
      ['application/json', '"just a string"'],
      ['application/json', '{"stream": "yes", "messages": [null, 1, "x", {"content": [null, {"text": 5}]}]}'],
    ];
    for (const [ct, body] of bodies) {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': ct },
        body,
      });
      expect(res.status).toBeLessThan(500);
      await res.arrayBuffer();
    }
    for (const path of ['/workers', '/workers/not-a-uuid', '/workers/00000000-0000-0000-0000-000000000000']) {
      for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
        const res = await fetch(gw.url + path, {
          method,
          headers: { 'content-type': 'application/json' },
          body: '{',
        });
        expect([400, 404, 405]).toContain(res.status);
        await res.arrayBuffer();
      }
    }
    expect(gw.child.exitCode).toBeNull();
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });
});

describe('utility and admin API', () => {
  it('/health, /liveness, /readiness', async () => {
    expect(await (await fetch(`${gw.url}/health`)).text()).toBe('OK');
    expect(await (await fetch(`${gw.url}/liveness`)).text()).toBe('OK');
    const r = await fetch(`${gw.url}/readiness`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ready', healthy_workers: 3, total_workers: 3 });
  });

  it('/get_model_info and /get_server_info come from a worker', async () => {
    const mi = await json(await fetch(`${gw.url}/get_model_info`));
    expect(mi.served_model_name ?? mi.model_path).toBeTruthy();
    const si = await fetch(`${gw.url}/get_server_info`);
    expect(si.status).toBe(200);
    await si.arrayBuffer();
  });

  it('/get_loads and /flush_cache fan out to every worker', async () => {
    const loads = await json(await fetch(`${gw.url}/get_loads`));
    expect(loads.total_workers).toBe(3);
    expect(loads.successful).toBe(3);
    const flush = await json(await fetch(`${gw.url}/flush_cache`, { method: 'POST' }));
    expect(flush.successful).toHaveLength(3);
    expect(flush.failed).toHaveLength(0);
  });

  it('worker CRUD with SMG status codes', async () => {
    const extra = await startMockFleet(1, ['--model', 'other-model']);
    const post = await fetch(`${gw.url}/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: extra.urls[0], labels: { tier: 'a' } }),
    });
    expect(post.status).toBe(202);
    const accepted = await json(post);
    expect(accepted.status).toBe('accepted');
    const id = accepted.worker_id as string;
    expect(post.headers.get('location')).toBe(`/workers/${id}`);

    // discovery through /v1/models, then healthy
    await waitFor(
      async () => {
        const w = await json(await fetch(`${gw.url}/workers/${id}`));
        return w.is_healthy === true && w.model_id === 'other-model';
      },
      10_000,
      'new worker healthy',
    );
    const dup = await fetch(`${gw.url}/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: extra.urls[0] }),
    });
    expect(dup.status).toBe(409);
    expect((await json(dup)).code).toBe('worker_already_exists');

    const byModel = await json(await fetch(`${gw.url}/workers?model=other-model`));
    expect(byModel.total).toBe(1);

    const patch = await fetch(`${gw.url}/workers/${id}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ priority: 7, labels: { tier: 'b' } }),
    });
    expect(patch.status).toBe(202);
    const after = await json(await fetch(`${gw.url}/workers/${id}`));
    expect(after.priority).toBe(7);
    expect((after.labels as Record<string, string>).tier).toBe('b');
    expect(after.api_key).toBeUndefined();

    const r = await client.chat.completions.create({
      model: 'other-model',
      messages: [{ role: 'user', content: 'to the new worker' }],
    });
    expect(r.model).toBe('other-model');

    const del = await fetch(`${gw.url}/workers/${id}`, { method: 'DELETE' });
    expect(del.status).toBe(202);
    await waitFor(async () => (await fetch(`${gw.url}/workers/${id}`)).status === 404, 10_000, 'removed');
    await extra.stop();
  }, 30_000);

  it('rejects non-http worker URLs and non-UUID ids with 400', async () => {
    const bad = await fetch(`${gw.url}/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: 'grpc://127.0.0.1:5000' }),
    });
    expect(bad.status).toBe(400);
    expect((await json(bad)).code).toBe('invalid_worker_spec');
    const notUuid = await fetch(`${gw.url}/workers/abc`);
    expect(notUuid.status).toBe(400);
    await notUuid.arrayBuffer();
    const missing = await fetch(`${gw.url}/workers/00000000-0000-4000-8000-000000000000`);
    expect(missing.status).toBe(404);
    await missing.arrayBuffer();
  });

  it('Prometheus metrics with SMG names', async () => {
    const text = await (await fetch(`${gw.metricsUrl}/metrics`)).text();
    for (const name of [
      'smg_http_requests_total',
      'smg_http_request_duration_seconds',
      'smg_http_responses_total',
      'smg_router_requests_total',
      'smg_router_request_duration_seconds',
      'smg_worker_selection_total',
      'smg_worker_health_checks_total',
      'smg_worker_pool_size',
      'smg_worker_health',
    ]) {
      expect(text).toContain(name);
    }
    expect(text).toMatch(/smg_worker_selection_total\{[^}]*policy="cache_aware"[^}]*\} \d+/);
    expect(text).toMatch(/smg_worker_pool_size\{[^}]*model="mock-model"[^}]*\} 3/);
  });
});

describe('CLI', () => {
  it('an unknown --policy exits 2 naming the allowed values', async () => {
    const { spawnSmg } = await import('../testing/processes.js');
    const p = spawnSmg(['--policy', 'fastest']);
    const code = await new Promise<number | null>((r) => p.child.once('exit', (c) => r(c)));
    expect(code).toBe(2);
    expect(p.output()).toContain('--policy');
    expect(p.output()).toContain('round_robin');
  });

  it('--version and --help', async () => {
    const { spawnSmg } = await import('../testing/processes.js');
    const v = spawnSmg(['--version']);
    expect(await new Promise((r) => v.child.once('exit', r))).toBe(0);
    expect(v.output()).toMatch(/^smg \d+\.\d+\.\d+/);
    const h = spawnSmg(['launch', '--help']);
    expect(await new Promise((r) => h.child.once('exit', r))).toBe(0);
    expect(h.output()).toContain('--worker-urls');
  });
});

describe('limits and upstream failures', () => {
  it('a body over --max-payload-size → 413 payload_too_large', async () => {
    const g = await startGatewayProc(['--worker-urls', mocks.urls[0], '--max-payload-size', '1000']);
    const big = JSON.stringify({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'x'.repeat(5000) }],
    });
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: big,
    });
    expect(res.status).toBe(413);
    expect(res.headers.get('x-smg-error-code')).toBe('payload_too_large');
    await res.arrayBuffer();
    const small = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(small.status).toBe(200);
    await small.arrayBuffer();
    await g.stop();
  });

  it('a worker that died since its last probe → 502 in the SMG envelope, process keeps serving', async () => {
    const lone = await startMockFleet(1);
    const g = await startGatewayProc(['--worker-urls', ...lone.urls, '--policy', 'round_robin']);
    await lone.stop();
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.status).toBe(502);
    expect(res.headers.get('x-smg-error-code')).toBe('upstream_connection_error');
    const body = (await res.json()) as { error: { code: string; type: string } };
    expect(body.error.type).toBe('Bad Gateway');
    expect((await fetch(`${g.url}/health`)).status).toBe(200);
    await g.stop();
  });

  it('a worker failing mid-stream ends the client stream with an error event, never silently', async () => {
    const flaky = await startMockFleet(1, ['--itl-ms', '5', '--output-tokens', '50']);
    await fetch(`${flaky.urls[0]}/mock/faults`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ fail_mid_stream_after: 3 }),
    });
    const g = await startGatewayProc(['--worker-urls', ...flaky.urls, '--policy', 'round_robin']);
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'mock-model',
        stream: true,
        messages: [{ role: 'user', content: 'hi' }],
      }),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).not.toContain('[DONE]');
    // the last SSE event carries SMG's error envelope
    const events = text.trim().split('\n\n');
    const last = JSON.parse(events[events.length - 1].replace(/^data: /, '')) as {
      error: { code: string; message: string };
    };
    expect(last.error.code).toBe('upstream_connection_error');
    expect(events.length).toBeGreaterThan(2);
    await g.stop();
    await flaky.stop();
  });
});
