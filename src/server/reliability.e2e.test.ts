/**
 * Reliability, admission, auth, limits and tracing end to end: real `smg launch` and
 * `smg mock-worker` processes on loopback, faults injected through the mock's hooks, the official
 * openai SDK as the client.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  freePort,
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type GatewayProc,
  type MockFleetProc,
} from '../testing/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'smg-reliability-'));
afterEach(async () => {
  await stopAll();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

const chat = (content = 'hello') => ({
  model: 'mock-model',
  messages: [{ role: 'user' as const, content }],
});

async function faults(url: string, f: Record<string, unknown>): Promise<void> {
  const r = await post(`${url}/mock/faults`, f);
  expect(r.status).toBe(200);
}

async function stats(url: string): Promise<{ requests: number; running: number }> {
  return (await (await fetch(`${url}/mock/stats`)).json()) as { requests: number; running: number };
}

async function metricsText(gw: GatewayProc): Promise<string> {
  return (await fetch(`${gw.metricsUrl}/metrics`)).text();
}

function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return total;
}

/** three single-worker mock processes, so one can be killed alone */
async function separateWorkers(n: number, extra: string[] = []): Promise<MockFleetProc[]> {
  return Promise.all(Array.from({ length: n }, () => startMockFleet(1, ['--model', 'mock-model', ...extra])));
}

async function readyWorkers(gw: GatewayProc, n: number): Promise<void> {
  await waitFor(
    async () => {
      const r = (await (await fetch(`${gw.url}/readiness`)).json()) as { healthy_workers: number };
      return r.healthy_workers === n;
    },
    15_000,
    `${n} healthy workers`,
  );
}

describe('retries', () => {
  it('a worker killed under concurrent non-streaming load costs the client nothing', async () => {
    const workers = await separateWorkers(3, ['--output-tokens', '8', '--itl-ms', '5']);
    const gw = await startGatewayProc([
      '--worker-urls',
      ...workers.map((w) => w.urls[0]),
      '--policy',
      'round_robin',
      '--health-check-interval-secs',
      '1',
    ]);
    await readyWorkers(gw, 3);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const total = 240;
    let started = 0;
    let completed = 0;
    const failures: string[] = [];
    const victim = workers[1];
    const lane = async () => {
      while (started < total) {
        started++;
        try {
          const r = await client.chat.completions.create(chat(`request ${started}`));
          expect(r.choices[0].message.content).toBeTruthy();
        } catch (err) {
          failures.push(String(err));
        }
        completed++;
        if (completed === 60) victim.child.kill('SIGKILL');
      }
    };
    await Promise.all(Array.from({ length: 12 }, lane));
    expect(failures).toEqual([]);
    expect(completed).toBe(total);
    const m = await metricsText(gw);
    expect(metricValue(m, 'smg_worker_retries_total')).toBeGreaterThan(0);
  }, 60_000);

  it('retries 503s on another worker, and gives up with the worker status when retries are off', async () => {
    const workers = await separateWorkers(2);
    const [a, b] = workers.map((w) => w.urls[0]);
    await faults(a, { fail_rate: 1, fail_status: 503 });
    const gw = await startGatewayProc([
      '--worker-urls',
      a,
      b,
      '--policy',
      'round_robin',
      '--disable-health-check',
    ]);
    for (let i = 0; i < 6; i++) {
      const r = await post(`${gw.url}/v1/chat/completions`, chat());
      expect(r.status).toBe(200);
      expect(r.headers.get('x-mock-worker')).toBe(new URL(b).host);
    }
    const off = await startGatewayProc(['--worker-urls', a, '--disable-retries', '--disable-health-check']);
    const r = await post(`${off.url}/v1/chat/completions`, chat());
    expect(r.status).toBe(503);
  }, 60_000);

  it('answers 504 call_upstream_timeout when the worker is slower than --request-timeout-secs', async () => {
    const [w] = await separateWorkers(1, ['--ttft-ms', '3000']);
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--request-timeout-secs',
      '1',
      '--retry-max-retries',
      '0',
      '--disable-health-check',
    ]);
    const t0 = Date.now();
    const r = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(r.status).toBe(504);
    expect(r.headers.get('x-smg-error-code')).toBe('call_upstream_timeout');
    expect(Date.now() - t0).toBeLessThan(2900);
  }, 30_000);
});

describe('circuit breaker', () => {
  it('a worker answering 503 opens its circuit, gets no traffic, and is used again after it recovers', async () => {
    const workers = await separateWorkers(2);
    const [a, b] = workers.map((w) => w.urls[0]);
    const gw = await startGatewayProc([
      '--worker-urls',
      a,
      b,
      '--policy',
      'round_robin',
      '--cb-failure-threshold',
      '3',
      '--cb-success-threshold',
      '2',
      '--cb-timeout-duration-secs',
      '2',
      '--health-check-interval-secs',
      '60',
    ]);
    await readyWorkers(gw, 2);
    await faults(a, { fail_rate: 1, fail_status: 503 });
    for (let i = 0; i < 12; i++)
      expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(200);
    let m = await metricsText(gw);
    expect(metricValue(m, 'smg_worker_cb_state', { worker: a })).toBe(1);
    expect(metricValue(m, 'smg_worker_cb_transitions_total', { worker: a, from: 'closed', to: 'open' })).toBe(
      1,
    );
    const seen = (await stats(a)).requests;
    for (let i = 0; i < 10; i++)
      expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(200);
    expect((await stats(a)).requests).toBe(seen);

    await faults(a, { reset: true });
    await new Promise((r) => setTimeout(r, 2300));
    for (let i = 0; i < 12; i++)
      expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(200);
    expect((await stats(a)).requests).toBeGreaterThan(seen + 2);
    m = await metricsText(gw);
    expect(metricValue(m, 'smg_worker_cb_state', { worker: a })).toBe(0);
  }, 60_000);

  it('4xx answers never open a circuit', async () => {
    const [w] = await separateWorkers(1);
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--cb-failure-threshold',
      '2',
      '--disable-health-check',
    ]);
    await faults(w.urls[0], { fail_rate: 1, fail_status: 400 });
    for (let i = 0; i < 6; i++)
      expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(400);
    await faults(w.urls[0], { reset: true });
    expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(200);
    expect(metricValue(await metricsText(gw), 'smg_worker_cb_state', { worker: w.urls[0] })).toBe(0);
  }, 30_000);
});

describe('admission', () => {
  it('429 with Retry-After when the concurrency limit is reached and there is no queue', async () => {
    const [w] = await separateWorkers(1, ['--ttft-ms', '800']);
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--max-concurrent-requests',
      '1',
      '--queue-size',
      '0',
      '--disable-health-check',
    ]);
    const slow = post(`${gw.url}/v1/chat/completions`, chat());
    await waitFor(async () => (await stats(w.urls[0])).running === 1, 5000, 'first request running');
    const r = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(r.status).toBe(429);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect((await slow).status).toBe(200);
    // the slot came back when the first response ended
    expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(200);
  }, 30_000);

  it('408 after --queue-timeout-secs in the queue', async () => {
    const [w] = await separateWorkers(1, ['--ttft-ms', '2500']);
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--max-concurrent-requests',
      '1',
      '--queue-size',
      '4',
      '--queue-timeout-secs',
      '1',
      '--disable-health-check',
    ]);
    const slow = post(`${gw.url}/v1/chat/completions`, chat());
    await waitFor(async () => (await stats(w.urls[0])).running === 1, 5000, 'first request running');
    const t0 = Date.now();
    const r = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(r.status).toBe(408);
    expect(r.headers.get('retry-after')).toBeTruthy();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect((await slow).status).toBe(200);
  }, 30_000);

  it('enforces tenant rate limits with 429 tenant_rate_limit_exceeded and Retry-After', async () => {
    const [w] = await separateWorkers(1);
    const rules = join(dir, 'tenant-limits.yaml');
    writeFileSync(
      rules,
      [
        'default_policy:',
        '  requests_per_minute: 100',
        'tenants:',
        '  - tenant_key: auth:acme',
        '    requests_per_minute: 3',
      ].join('\n'),
    );
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--tenant-api-key',
      'acme:acme-key',
      'globex:globex-key',
      '--tenant-rate-limit-enabled',
      '--tenant-rate-limit-config',
      rules,
      '--disable-health-check',
    ]);
    const acme = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'acme-key', maxRetries: 0 });
    for (let i = 0; i < 3; i++) await acme.chat.completions.create(chat());
    const err = await acme.chat.completions.create(chat()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    const e = err as InstanceType<typeof OpenAI.RateLimitError>;
    expect(e.status).toBe(429);
    expect(Number(e.headers?.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(e.headers?.get('x-smg-error-code')).toBe('tenant_rate_limit_exceeded');
    // another tenant is unaffected
    const globex = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'globex-key', maxRetries: 0 });
    await expect(globex.chat.completions.create(chat())).resolves.toBeTruthy();
  }, 30_000);
});

describe('priority scheduler', () => {
  it('a system request preempts a bulk one that has not started answering; bulk gets 503 + Retry-After', async () => {
    const [w] = await separateWorkers(1, ['--ttft-ms', '1500']);
    const file = join(dir, 'priority.yaml');
    writeFileSync(
      file,
      [
        'capacity: 1',
        'classes:',
        ...['system', 'interactive', 'default', 'bulk'].map(
          (c) => `  ${c}: { reserved_floor: 0, reserved_per_slot: 0 }`,
        ),
      ].join('\n'),
    );
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--priority-scheduler-enabled',
      '--priority-scheduler-config',
      file,
      // unlisted tenants are clamped to this class (SMG's default: `default`)
      '--priority-scheduler-default-max-class',
      'system',
      '--disable-health-check',
    ]);
    const bulk = post(`${gw.url}/v1/chat/completions`, chat('bulk job'), { 'x-smg-priority': 'bulk' });
    await waitFor(async () => (await stats(w.urls[0])).running === 1, 5000, 'bulk request running');
    const system = await post(`${gw.url}/v1/chat/completions`, chat('urgent'), {
      'x-smg-priority': 'system',
    });
    const preempted = await bulk;
    expect(preempted.status).toBe(503);
    expect(preempted.headers.get('x-smg-error-code')).toBe('scheduler_preempted');
    expect(preempted.headers.get('x-smg-preempted')).toBe('true');
    expect(preempted.headers.get('retry-after')).toBe('1');
    expect(system.status).toBe(200);
    const m = await metricsText(gw);
    expect(
      metricValue(m, 'smg_scheduler_preemption_total', { victim_class: 'bulk', by_class: 'system' }),
    ).toBe(1);
  }, 30_000);
});

describe('auth', () => {
  it('data plane 401, control plane 401/403, the key sent to workers, and 413', async () => {
    const [w] = await separateWorkers(1);
    const gw = await startGatewayProc([
      '--log-level',
      'info',
      '--worker-urls',
      w.urls[0],
      '--api-key',
      'gateway-key',
      '--control-plane-api-keys',
      'ops:Operator:admin:admin-key',
      'viewer:Viewer:user:user-key',
      '--max-payload-size',
      '4096',
      '--disable-health-check',
    ]);
    const bad = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(bad.chat.completions.create(chat())).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const good = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'gateway-key', maxRetries: 0 });
    await expect(good.chat.completions.create(chat())).resolves.toBeTruthy();
    // x-api-key works too (Anthropic SDK style)
    expect((await post(`${gw.url}/v1/chat/completions`, chat(), { 'x-api-key': 'gateway-key' })).status).toBe(
      200,
    );
    // the worker saw the gateway's key, not a client's
    const last = (await (await fetch(`${w.urls[0]}/mock/last-request`)).json()) as {
      headers: Record<string, string>;
    };
    expect(last.headers['authorization']).toBe('Bearer gateway-key');
    expect(last.headers['x-api-key']).toBeUndefined();

    const none = await fetch(`${gw.url}/workers`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/Bearer/);
    const user = await fetch(`${gw.url}/workers`, { headers: { authorization: 'Bearer user-key' } });
    expect(user.status).toBe(403);
    const admin = await fetch(`${gw.url}/workers`, { headers: { authorization: 'Bearer admin-key' } });
    expect(admin.status).toBe(200);
    // public routes stay public
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);

    const big = await post(`${gw.url}/v1/chat/completions`, chat('x'.repeat(10_000)), {
      authorization: 'Bearer gateway-key',
    });
    expect(big.status).toBe(413);
    // the audit log names the caller, never the key
    await waitFor(async () => gw.output().includes('audit'), 5000, 'audit line');
    expect(gw.output()).not.toMatch(/admin-key|user-key|gateway-key/);
  }, 30_000);
});

describe('streams and shutdown', () => {
  it('a worker failing mid-stream ends the SSE stream with an error event the SDK raises', async () => {
    const [w] = await separateWorkers(1, ['--output-tokens', '12', '--itl-ms', '5']);
    const gw = await startGatewayProc(['--worker-urls', w.urls[0], '--disable-health-check']);
    await faults(w.urls[0], { fail_mid_stream_after: 3 });
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create({ ...chat(), stream: true });
    let chunks = 0;
    const err = await (async () => {
      for await (const c of stream) if (c.choices[0]?.delta?.content) chunks++;
    })().catch((e: unknown) => e);
    expect(chunks).toBeGreaterThanOrEqual(1);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(String((err as Error).message)).toMatch(/failed|upstream/i);
  }, 30_000);

  it('SIGTERM: readiness 503 draining at once, in-flight requests finish, exit 0', async () => {
    const [w] = await separateWorkers(1, ['--ttft-ms', '1500']);
    const gw = await startGatewayProc([
      '--worker-urls',
      w.urls[0],
      '--shutdown-grace-period-secs',
      '6',
      '--disable-health-check',
    ]);
    const inflight = post(`${gw.url}/v1/chat/completions`, chat());
    await waitFor(async () => (await stats(w.urls[0])).running === 1, 5000, 'request running');
    gw.child.kill('SIGTERM');
    await waitFor(
      async () => {
        const r = await fetch(`${gw.url}/readiness`);
        const body = (await r.json()) as { reason?: string };
        return r.status === 503 && body.reason === 'draining';
      },
      3000,
      'readiness draining',
    );
    const r = await inflight;
    expect(r.status).toBe(200);
    expect(((await r.json()) as { choices: unknown[] }).choices.length).toBe(1);
    const code = await new Promise<number | null>((resolve) => {
      if (gw.child.exitCode !== null) resolve(gw.child.exitCode);
      else gw.child.once('exit', (c) => resolve(c));
    });
    expect(code).toBe(0);
  }, 30_000);
});

describe('tracing', () => {
  it('exports a span per request to an OTLP/HTTP receiver and propagates traceparent to the worker', async () => {
    const received: { path: string | undefined; type: string | undefined; body: Buffer }[] = [];
    const receiver = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ path: req.url, type: req.headers['content-type'], body: Buffer.concat(chunks) });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    // OTLP/HTTP carries protobuf (trace ids as bytes) or JSON (trace ids as hex)
    const carries = (body: Buffer, traceId: string) =>
      body.includes(Buffer.from(traceId, 'hex')) || body.toString('utf8').includes(traceId);
    const port = await freePort();
    await new Promise<void>((r) => receiver.listen(port, '127.0.0.1', () => r()));
    try {
      const [w] = await separateWorkers(1);
      const gw = await startGatewayProc([
        '--worker-urls',
        w.urls[0],
        '--enable-trace',
        '--otlp-traces-endpoint',
        `http://127.0.0.1:${port}/v1/traces`,
        '--disable-health-check',
      ]);
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const r = await post(`${gw.url}/v1/chat/completions`, chat(), {
        traceparent: `00-${traceId}-00f067aa0ba902b7-01`,
      });
      expect(r.status).toBe(200);
      const last = (await (await fetch(`${w.urls[0]}/mock/last-request`)).json()) as {
        headers: Record<string, string>;
      };
      expect(last.headers['traceparent']).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
      expect(last.headers['traceparent']).not.toContain('00f067aa0ba902b7');
      await waitFor(async () => received.some((x) => carries(x.body, traceId)), 10_000, 'span export');
      const hit = received.find((x) => carries(x.body, traceId));
      expect(hit?.path).toBe('/v1/traces');
      expect(hit?.type).toMatch(/application\/(x-protobuf|json)/);
      expect(hit?.body.toString('latin1')).toContain('http_request');

      // the workers' own metrics, concatenated
      const em = await fetch(`${gw.url}/engine_metrics`);
      expect(em.status).toBe(200);
      const text = await em.text();
      expect(text).toContain(`# worker: ${w.urls[0]}`);
      expect(text).toMatch(/^sglang:/m);
      // TTFT, TPOT and token counters from a streamed response's usage
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const stream = await client.chat.completions.create({
        ...chat(),
        stream: true,
        stream_options: { include_usage: true },
      });
      for await (const _ of stream) void _;
      const m = await metricsText(gw);
      expect(metricValue(m, 'smg_router_ttft_seconds_count')).toBeGreaterThanOrEqual(1);
      expect(metricValue(m, 'smg_router_tokens_total', { token_type: 'output' })).toBeGreaterThan(0);
    } finally {
      receiver.close();
    }
  }, 30_000);
});
