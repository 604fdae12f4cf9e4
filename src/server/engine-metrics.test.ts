import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { startMockWorkers } from '../mock/server.js';
import { mockWorkerOptions } from '../mock/options.js';
import { Replica } from '../state/replica.js';
import type { WorkerSpec } from '../state/worker.js';
import { UpstreamPools } from '../workers/upstream.js';
import { registerEngineMetricsRoute, type EngineMetricsDeps } from './engine-metrics.js';
import { makeErrorHandler } from './error-handler.js';

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function spec(url: string, extra: Partial<WorkerSpec> = {}): WorkerSpec {
  return {
    url,
    models: ['m'],
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels: {},
    priority: 50,
    cost: 1,
    health: {},
    max_connection_attempts: 20,
    ...extra,
  };
}

function replicaWith(specs: WorkerSpec[]): Replica {
  const replica = new Replica({ nodeId: 'n1' });
  specs.forEach((s, i) =>
    replica.apply({ kind: 'worker.upsert', id: `w${i}`, spec: s, hlc: replica.tick() }),
  );
  return replica;
}

async function app(deps: EngineMetricsDeps): Promise<FastifyInstance> {
  const a = Fastify();
  a.setErrorHandler(makeErrorHandler(1024 * 1024));
  registerEngineMetricsRoute(a, deps);
  await a.ready();
  cleanup.push(() => a.close());
  return a;
}

/** a worker that answers `/…/metrics` as told and records the Authorization it received */
async function fakeWorker(
  answer: (req: http.IncomingMessage, res: http.ServerResponse) => void,
): Promise<{ url: string; auth: (string | undefined)[]; paths: string[] }> {
  const auth: (string | undefined)[] = [];
  const paths: string[] = [];
  const server = http.createServer((req, res) => {
    auth.push(req.headers.authorization);
    paths.push(req.url ?? '');
    answer(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, auth, paths };
}

/** a port nothing listens on */
async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** the body split into sections, one per `# worker:` header line */
function sections(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let current = '';
  for (const line of text.split('\n')) {
    const m = /^# worker: (\S+)(?: error: (.*))?$/.exec(line);
    if (m) {
      current = m[1];
      out.set(current, m[2] !== undefined ? `error: ${m[2]}` : '');
    } else if (line !== '') out.set(current, (out.get(current) ?? '') + line + '\n');
  }
  return out;
}

describe('GET /engine_metrics', () => {
  it('is 503 no_available_workers with no worker registered', async () => {
    const a = await app({ replica: new Replica({ nodeId: 'n1' }) });
    const res = await a.inject({ method: 'GET', url: '/engine_metrics' });
    expect(res.statusCode).toBe(503);
    expect(res.headers['x-smg-error-code']).toBe('no_available_workers');
    expect(res.json()).toEqual({
      error: {
        type: 'Service Unavailable',
        code: 'no_available_workers',
        message: 'No available workers',
        param: null,
      },
    });
  });

  it("concatenates the workers' texts and reports each failing worker in its place", async () => {
    const fleet = await startMockWorkers(mockWorkerOptions({ count: 1 }));
    cleanup.push(() => fleet.close());
    const mock = fleet.workers[0].url;
    const keyed = await fakeWorker((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('vllm:num_requests_running 2'); // no final newline: one is added
    });
    const based = await fakeWorker((_req, res) => res.end('x 1\n'));
    const failing = await fakeWorker((_req, res) => {
      res.writeHead(500);
      res.end('boom');
    });
    const silent = await fakeWorker(() => {
      // never answers: the fetch times out
    });
    const refused = `http://127.0.0.1:${await closedPort()}`;
    const replica = replicaWith([
      spec(mock),
      spec(keyed.url, { api_key: 'worker-key' }),
      spec(`${based.url}/v1/`),
      spec(failing.url),
      spec(silent.url),
      spec(refused),
      spec('grpc://127.0.0.1:50051', { connection_mode: 'grpc' }),
    ]);
    const pools = new UpstreamPools({ requestTimeoutMs: 60_000 });
    cleanup.push(() => pools.closeAll());
    const a = await app({ replica, pools, timeoutMs: 1000, workerApiKey: 'gateway-key' });

    const res = await a.inject({ method: 'GET', url: '/engine_metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    const s = sections(res.body);
    // every worker exactly once (in the registry's order)
    expect([...s.keys()]).toEqual(replica.registry.list().map((w) => w.url));
    expect([...s.keys()].sort()).toEqual(
      [
        mock,
        keyed.url,
        `${based.url}/v1/`,
        failing.url,
        silent.url,
        refused,
        'grpc://127.0.0.1:50051',
      ].sort(),
    );
    expect(s.get(mock)).toMatch(/^# HELP sglang:num_running_reqs/);
    expect(s.get(mock)).toContain('sglang:token_usage{model_name="mock-model"}');
    expect(s.get(keyed.url)).toBe('vllm:num_requests_running 2\n');
    expect(s.get(`${based.url}/v1/`)).toBe('x 1\n');
    expect(s.get(failing.url)).toBe('error: HTTP 500');
    expect(s.get(silent.url)).toBe('error: TimeoutError');
    expect(s.get(refused)).toBe('error: ECONNREFUSED');
    expect(s.get('grpc://127.0.0.1:50051')).toMatch(/^error: gRPC worker/);
    // the worker's own key wins over the gateway's; a base path is kept
    expect(keyed.auth).toEqual(['Bearer worker-key']);
    expect(based.auth).toEqual(['Bearer gateway-key']);
    expect(based.paths).toEqual(['/v1/metrics']);
  });

  it('sends no Authorization when there is no key, and cuts an oversized answer at a line end', async () => {
    const big = await fakeWorker((_req, res) => res.end('a 1\n'.repeat(1000)));
    const a = await app({ replica: replicaWith([spec(big.url)]), maxBytesPerWorker: 2002 });
    const res = await a.inject({ method: 'GET', url: '/engine_metrics' });
    expect(big.auth).toEqual([undefined]);
    const lines = res.body.trimEnd().split('\n');
    expect(lines[0]).toBe(`# worker: ${big.url}`);
    expect(lines.slice(1, -1).every((l) => l === 'a 1')).toBe(true);
    expect(lines).toHaveLength(1 + 500 + 1);
    expect(lines[lines.length - 1]).toBe(`# worker: ${big.url} truncated at 2002 bytes`);
  });
});
