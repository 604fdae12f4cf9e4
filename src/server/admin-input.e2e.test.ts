/**
 * Hostile and careless control-plane input against a real `smg launch --ha-mesh` process: the
 * worker writes (one schema with bounds, unknown fields named), `__proto__` and Object.prototype
 * names as mesh keys, the admin body cap, and a seeded fast-check run over every admin and mesh
 * route that must only ever answer 2xx/4xx, log no unhandled error and leave the node serving.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLICY_NAMES } from '../routing/types.js';
import { freePort, startGatewayProc, stopAll, waitFor, type GatewayProc } from '../testing/processes.js';

let gw: GatewayProc;
let dataDir: string;

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'smg-admin-input-'));
  gw = await startGatewayProc(
    ['--ha-mesh', '--mesh-port', String(await freePort()), '--data-dir', dataDir, '--log-level', 'info'],
    { waitReady: false },
  );
  // the mesh routes answer once the mesh runtime is up
  await waitFor(async () => (await fetch(`${gw.url}/mesh/status`)).status === 200, 20_000, 'mesh up', gw);
}, 60_000);

afterAll(async () => {
  await stopAll();
  rmSync(dataDir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  code: string | null;
  body: string;
}

async function call(
  method: string,
  route: string,
  body?: string,
  contentType = 'application/json',
): Promise<Answer> {
  const res = await fetch(`${gw.url}${route}`, {
    method,
    ...(body !== undefined && { body, headers: { 'content-type': contentType } }),
  });
  return { status: res.status, code: res.headers.get('x-smg-error-code'), body: await res.text() };
}

const post = (route: string, value: unknown) => call('POST', route, JSON.stringify(value));

/**
 * What the server answers to a request that declares a body of `bytes` bytes, sending only
 * the headers: a server that reads a body past its limit never answers (the test times out), one
 * that checks the declared length answers at once. Over a raw socket, because once the server
 * answers and closes, an HTTP client still writing the body gets EPIPE and drops the answer.
 */
function answerToDeclaredBody(method: string, route: string, bytes: number): Promise<Answer> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve) => {
    let raw = Buffer.alloc(0);
    const socket = net.connect(Number(port), hostname, () =>
      socket.write(
        `${method} ${route} HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: application/json\r\n` +
          `content-length: ${bytes}\r\n\r\n{"url":"`,
      ),
    );
    socket.on('data', (chunk: Buffer) => {
      raw = Buffer.concat([raw, chunk]);
      const text = raw.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = text.slice(0, end);
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (raw.length < end + 4 + length) return;
      socket.destroy();
      resolve({
        status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0),
        code: /\r\nx-smg-error-code: (\S+)/i.exec(head)?.[1] ?? null,
        body: raw.subarray(end + 4, end + 4 + length).toString('utf8'),
      });
    });
    socket.on('error', () => undefined);
  });
}

describe('worker writes: one schema with bounds', () => {
  it('a 100 KB host name, a 1 MB path and unknown fields are 400s that say why', async () => {
    const host = await post('/workers', { url: `http://${'a'.repeat(100_000)}:1` });
    expect(host.status).toBe(400);
    expect(JSON.parse(host.body)).toEqual({
      error: 'url: Too big: expected string to have <=2048 characters',
      code: 'invalid_worker_spec',
    });
    const longPath = await post('/workers', { url: `http://127.0.0.1:9/${'p'.repeat(1_000_000)}` });
    expect(longPath.status).toBe(400);
    expect(longPath.code).toBe('invalid_worker_spec');
    const unknown = await post('/workers', { url: 'http://127.0.0.1:9', colour: 'blue', size: 3 });
    expect(unknown.status).toBe(400);
    expect(JSON.parse(unknown.body).error).toBe('body: unknown fields "colour", "size"');
  });

  it('100,000 labels are refused before they are parsed; 65 are refused by the schema', async () => {
    const many = Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`k${i}`, 'v']));
    const length = Buffer.byteLength(JSON.stringify({ url: 'http://127.0.0.1:9', labels: many }));
    const big = await answerToDeclaredBody('POST', '/workers', length);
    expect(big.status).toBe(413);
    expect(big.code).toBe('payload_too_large');
    expect(JSON.parse(big.body).error).toBe('Request body exceeds the limit of 1048576 bytes');
    const some = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
    const over = await post('/workers', { url: 'http://127.0.0.1:9', labels: some });
    expect(over.status).toBe(400);
    expect(JSON.parse(over.body).error).toBe('labels: at most 64 labels');
  });

  it('an interval no timer can wait is a 400 in POST and PATCH alike', async () => {
    const add = await post('/workers', {
      url: 'http://127.0.0.1:9',
      health: { check_interval_secs: 3_000_000 },
    });
    expect(add.status).toBe(400);
    expect(JSON.parse(add.body).error).toBe(
      'health.check_interval_secs: must be at most 2073600 (24 days, the longest a timer can wait)',
    );
    const ok = await post('/workers', { url: 'http://127.0.0.1:9', health: { check_interval_secs: 60 } });
    expect(ok.status).toBe(202);
    const id = (JSON.parse(ok.body) as { worker_id: string }).worker_id;
    const patch = await call(
      'PATCH',
      `/workers/${id}`,
      JSON.stringify({ health: { check_interval_secs: 3_000_000 } }),
    );
    expect(patch.status).toBe(400);
    const unknownPatch = await call('PATCH', `/workers/${id}`, JSON.stringify({ url: 'http://elsewhere:1' }));
    expect(JSON.parse(unknownPatch.body).error).toBe('body: unknown field "url"');
    // SMG's documented fields stay accepted, and GET shows them
    const put = await call(
      'PUT',
      `/workers/${id}`,
      JSON.stringify({
        url: 'http://127.0.0.1:9',
        dp_rank: 0,
        dp_size: 2,
        kv_role: 'kv_both',
        kv_block_size: 16,
      }),
    );
    expect(put.status).toBe(202);
    await waitFor(
      async () =>
        (JSON.parse((await call('GET', `/workers/${id}`)).body) as { dp_size?: number }).dp_size === 2,
      10_000,
      'replaced spec visible',
    );
    expect((await call('DELETE', `/workers/${id}`)).status).toBe(202);
  });

  it('a 5 MB body to any control-plane route is a 413 before it is read, not 5 MB buffered', async () => {
    for (const [method, route] of [
      ['POST', '/workers'],
      ['PUT', '/workers/00000000-0000-4000-8000-000000000000'],
      ['DELETE', '/workers/00000000-0000-4000-8000-000000000000'],
      ['POST', '/mesh/config'],
      ['POST', '/flush_cache'],
    ]) {
      expect((await answerToDeclaredBody(method, route, 5 * 1024 * 1024)).status, `${method} ${route}`).toBe(
        413,
      );
    }
  });
});

describe('Object.prototype names as mesh keys', () => {
  it('__proto__ is a 400 as a config key and as a policy model, never a 500', async () => {
    const cfg = await post('/mesh/config', { key: '__proto__', value: '00' });
    expect(cfg.status).toBe(400);
    expect(JSON.parse(cfg.body).error.message).toBe(
      '"key" must be 1-128 characters of A-Z a-z 0-9 . _ : / - (and not __proto__)',
    );
    const policy = await call('PUT', '/mesh/policies/__proto__', JSON.stringify({ policy: 'random' }));
    expect(policy.status).toBe(400);
    expect(JSON.parse(policy.body).error.message).toBe('invalid model id "__proto__"');
  });

  it('constructor and toString are ordinary keys: stored when written, absent otherwise', async () => {
    expect((await post('/mesh/config', { key: 'constructor', value: 'ab' })).status).toBe(200);
    expect(JSON.parse((await call('GET', '/mesh/config/constructor')).body)).toEqual({
      key: 'constructor',
      value: 'ab',
      format: 'hex',
    });
    expect((await call('GET', '/mesh/config/toString')).status).toBe(404);
    const policy = await call('PUT', '/mesh/policies/toString', JSON.stringify({ policy: 'round_robin' }));
    expect(policy.status).toBe(200);
    const got = JSON.parse((await call('GET', '/mesh/policies/toString')).body) as { policy_type: string };
    expect(got.policy_type).toBe('round_robin');
    expect((await call('GET', '/mesh/policies/hasOwnProperty')).status).toBe(404);
  });
});

describe('every admin and mesh route under random input (fast-check, fixed seed)', () => {
  const UUID = '00000000-0000-4000-8000-000000000000';
  const key = fc.oneof(
    fc.constantFrom(
      '__proto__',
      'constructor',
      'toString',
      'prototype',
      'valueOf',
      UUID,
      'a'.repeat(300),
      '',
    ),
    fc.string({ maxLength: 40 }),
  );
  const field = fc.oneof(
    fc.constantFrom(
      '__proto__',
      'constructor',
      'url',
      'labels',
      'health',
      'models',
      'resilience',
      'http_pool',
      'key',
      'value',
      'policy',
      'limit_per_second',
      'priority',
    ),
    fc.string({ maxLength: 12 }),
  );
  const json = fc.oneof(
    fc.jsonValue({ maxDepth: 4 }),
    fc.dictionary(field, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }),
    fc.record(
      {
        url: fc.constantFrom(
          'http://127.0.0.1:9',
          '127.0.0.1:9',
          'grpc://x:1',
          '',
          'http://[::1',
          'http://u:p@h:1',
        ),
        labels: fc.dictionary(field, fc.oneof(fc.string({ maxLength: 8 }), fc.integer())),
        health: fc.dictionary(
          fc.constantFrom('check_interval_secs', 'timeout_secs', 'drain_settle_secs', 'bogus'),
          fc.oneof(fc.integer(), fc.double(), fc.constant(3_000_000), fc.constant(null)),
        ),
        models: fc.array(
          fc.oneof(fc.string({ maxLength: 8 }), fc.record({ id: fc.string({ maxLength: 8 }) })),
        ),
        policy: fc.constantFrom(...POLICY_NAMES, 'bogus'),
        key: key,
        value: fc.oneof(fc.constantFrom('00', 'ab', 'zz', '0'), fc.string({ maxLength: 8 })),
        limit_per_second: fc.oneof(fc.integer(), fc.double(), fc.constant(-1)),
      },
      { requiredKeys: [] },
    ),
  );
  const body = fc.oneof(
    json.map((v) => ({ text: JSON.stringify(v), type: 'application/json' })),
    fc.string({ maxLength: 60 }).map((s) => ({ text: s, type: 'application/json' })),
    fc.constantFrom(
      { text: `{"url":${'['.repeat(20_000)}${']'.repeat(20_000)}}`, type: 'application/json' },
      { text: '{"url":"http://127.0.0.1:9"}', type: 'text/plain' },
      { text: '', type: 'application/json' },
    ),
  );
  const ROUTES: [method: string, route: string][] = [
    ['POST', '/workers'],
    ['PUT', '/workers/:id'],
    ['PATCH', '/workers/:id'],
    ['DELETE', '/workers/:id'],
    ['GET', '/workers/:id'],
    ['GET', '/workers?model=:id&model=:id'],
    ['GET', '/workers?model=:id'],
    ['PUT', '/mesh/policies/:id'],
    ['GET', '/mesh/policies/:id'],
    ['POST', '/mesh/config'],
    ['GET', '/mesh/config/:id'],
    ['GET', '/mesh/workers/:id'],
    ['POST', '/mesh/rate-limit'],
    ['POST', '/flush_cache'],
  ];
  const request = fc.record({
    route: fc.constantFrom(...ROUTES),
    id: key,
    body,
  });

  it('answers 2xx or 4xx, logs no unhandled error, and keeps serving', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(request, async ({ route: [method, template], id, body: b }) => {
        const route = template.replaceAll(':id', encodeURIComponent(id));
        const a = await call(method, route, method === 'GET' ? undefined : b.text, b.type);
        seen.set(a.status, (seen.get(a.status) ?? 0) + 1);
        expect(a.status, `${method} ${route} ${b.text.slice(0, 120)} → ${a.body.slice(0, 200)}`).toBeLessThan(
          500,
        );
        expect(a.body).not.toMatch(/RangeError|TypeError|at .*\.js:\d+/);
      }),
      { seed: 20_240_613, numRuns: 400 },
    );
    // the run exercised both sides: accepted writes and refusals
    expect([...seen.keys()].some((s) => s < 300)).toBe(true);
    expect([...seen.keys()].some((s) => s >= 400)).toBe(true);
    expect(gw.output()).not.toMatch(/unhandled error|unhandled rejection|RangeError/);
    expect((await call('GET', '/health')).status).toBe(200);
    expect((await call('GET', '/mesh/status')).status).toBe(200);
  }, 120_000);
});
