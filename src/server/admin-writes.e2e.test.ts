/**
 * Admin writes that take effect at once, with real processes (a gateway alone, then a mesh of
 * three peers) and mock engines: a worker added with POST /workers serves at its first probe, on
 * any peer; /flush_cache empties the prefix index of every peer, also of one that was down when it
 * happened; PUT /mesh/policies/{model} applies the policy's own parameters on every peer, across a
 * restart; /get_model_info and /get_server_info answer for the requested model.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshCluster, meshStatus, type MeshPeer } from '../testing/mesh-cluster.js';
import {
  freePort,
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type GatewayProc,
  type MockFleetProc,
} from '../testing/processes.js';

async function call(
  url: string,
  init: { method?: string; body?: unknown } = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    ...(init.body !== undefined && {
      body: JSON.stringify(init.body),
      headers: { 'content-type': 'application/json' },
    }),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { text };
  }
  return { status: res.status, body };
}

async function healthChecks(url: string): Promise<number> {
  return (await call(`${url}/mock/stats`)).body.health_checks as number;
}

/** the engine (`host:port`) that served one chat request with this system prompt */
async function chat(url: string, model: string, system: string, user = 'q'): Promise<string> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 20_000 });
  const { response } = await client.chat.completions
    .create({
      model,
      messages: [
        { role: 'system', content: system },
        { role: 'user', content: user },
      ],
      max_tokens: 2,
    })
    .withResponse();
  return response.headers.get('x-mock-worker') ?? '?';
}

const engine = (url: string) => url.replace(/^http:\/\//, '');

/** `n` distinct words, deterministic per seed */
function words(seed: number, chars: number): string {
  const out: string[] = [];
  let len = 0;
  for (let i = 0; len < chars; i++) {
    const w = `k${seed}x${(i * 7919 + seed * 104729) % 1_000_003}`;
    out.push(w);
    len += w.length + 1;
  }
  return out.join(' ').slice(0, chars);
}

async function addWorker(url: string, body: Record<string, unknown>): Promise<string> {
  const r = await call(`${url}/workers`, { method: 'POST', body });
  expect(r.status).toBe(202);
  return r.body.worker_id as string;
}

afterAll(async () => {
  await stopAll();
});

describe('a gateway alone', () => {
  let base: MockFleetProc;
  let spare: MockFleetProc;
  let other: MockFleetProc;
  let gw: GatewayProc;

  beforeAll(async () => {
    [base, spare, other] = await Promise.all([
      startMockFleet(2, ['--model', 'a-model', '--output-tokens', '2']),
      startMockFleet(1, ['--model', 'a-model', '--output-tokens', '2']),
      startMockFleet(1, ['--model', 'b-model', '--output-tokens', '2']),
    ]);
    gw = await startGatewayProc([
      '--worker-urls',
      ...base.urls,
      '--policy',
      'round_robin',
      '--model-alias',
      'my-alias=b-model',
    ]);
  }, 60_000);

  it('a worker added with POST /workers serves from its first successful probe: 9 requests right after reach it', async () => {
    const url = spare.urls[0];
    const before = await healthChecks(url);
    const id = await addWorker(gw.url, { url });
    await waitFor(
      async () => (await call(`${gw.url}/workers/${id}`)).body.status === 'ready',
      10_000,
      'added worker ready',
    );
    // one probe answered, with the default success threshold of 2
    expect((await healthChecks(url)) - before).toBe(1);
    const served: string[] = [];
    for (let i = 0; i < 9; i++) served.push(await chat(gw.url, 'a-model', `request ${i}`));
    // round robin over three workers
    expect(served.filter((e) => e === engine(url))).toHaveLength(3);
  }, 30_000);

  it('/get_model_info and /get_server_info answer for the requested model', async () => {
    // model info of the one model served
    expect((await call(`${gw.url}/get_model_info`)).body.served_model_name).toBe('a-model');
    await addWorker(gw.url, { url: other.urls[0] });
    const dead = `http://127.0.0.1:${await freePort()}`;
    await addWorker(gw.url, { url: dead, models: ['c-model'] });
    await waitFor(
      async () => (await call(`${gw.url}/get_model_info?model=b-model`)).status === 200,
      10_000,
      'b-model worker ready',
    );
    expect((await call(`${gw.url}/get_model_info?model=b-model`)).body.served_model_name).toBe('b-model');
    expect((await call(`${gw.url}/get_model_info?model=a-model`)).body.served_model_name).toBe('a-model');
    expect((await call(`${gw.url}/get_model_info?model=my-alias`)).body.served_model_name).toBe('b-model');
    const si = await call(`${gw.url}/get_server_info?model=b-model`);
    expect(si.status).toBe(200);
    expect(JSON.stringify(si.body)).toContain('b-model');
    const several = await call(`${gw.url}/get_model_info`);
    expect(several.status).toBe(400);
    expect(several.body.error).toMatchObject({ code: 'invalid_request' });
    expect(String((several.body.error as { message: string }).message)).toMatch(
      /a-model, b-model, c-model.*\?model=/,
    );
    const unknown = await call(`${gw.url}/get_server_info?model=nope`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatchObject({ code: 'model_not_found' });
    // c-model's only worker does not answer: none routable
    const down = await call(`${gw.url}/get_model_info?model=c-model`);
    expect(down.status).toBe(503);
    expect(down.body.error).toMatchObject({ code: 'no_available_workers' });
    expect((await call(`${gw.url}/get_model_info?model=a&model=b`)).status).toBe(400);
  }, 30_000);
});

describe('a mesh of three peers', () => {
  let base: MockFleetProc;
  let spares: MockFleetProc;
  let flushed: MockFleetProc;
  let tuned: MockFleetProc;
  let cluster: MeshCluster;

  interface MeshWorker {
    worker_id: string;
    url: string;
    routable: boolean;
    cache_blocks: number;
    observations: { node_id: string; status: string }[];
  }
  const meshWorkers = async (p: MeshPeer): Promise<MeshWorker[]> =>
    (await call(`${p.url}/mesh/workers`)).body as unknown as MeshWorker[];
  const blocksOf = async (p: MeshPeer, urls: string[]): Promise<number[]> => {
    const ws = await meshWorkers(p);
    return urls.map((u) => ws.find((w) => w.url === u)?.cache_blocks ?? -1);
  };

  beforeAll(async () => {
    [base, spares, flushed, tuned] = await Promise.all([
      startMockFleet(2, ['--model', 'a-model', '--output-tokens', '2']),
      startMockFleet(3, ['--model', 'a-model', '--output-tokens', '2']),
      startMockFleet(2, ['--model', 'f-model', '--output-tokens', '2']),
      startMockFleet(2, ['--model', 'p-model', '--output-tokens', '2']),
    ]);
    cluster = new MeshCluster(3, {
      insecure: true,
      extra: ['--policy', 'cache_aware'],
      firstExtra: ['--worker-urls', ...base.urls, ...flushed.urls, ...tuned.urls],
    });
    await cluster.start();
    await cluster.waitConverged(30_000);
    await waitFor(
      async () => {
        for (const p of cluster.running()) {
          const ws = await meshWorkers(p);
          if (ws.length !== 6 || !ws.every((w) => w.routable)) return false;
        }
        return true;
      },
      30_000,
      'every worker routable on every peer',
    );
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it('a worker added on any peer serves there from its first probe', async () => {
    const rr = await call(`${cluster.peer(0).url}/mesh/policies/a-model`, {
      method: 'PUT',
      body: { policy: 'round_robin' },
    });
    expect(rr.status).toBe(200);
    for (const p of cluster.running())
      await waitFor(
        async () => (await call(`${p.url}/mesh/policies/a-model`)).body.policy_type === 'round_robin',
        10_000,
        `policy on ${p.spec.name}`,
      );
    for (let i = 0; i < 3; i++) {
      const peer = cluster.peer(i);
      const self = (await meshStatus(peer.url)).nodes.find((n) => n.self) as { node_id?: string };
      const url = spares.urls[i];
      const id = await addWorker(peer.url, { url });
      await waitFor(
        async () => (await call(`${peer.url}/workers/${id}`)).body.status === 'ready',
        10_000,
        `worker added on ${peer.spec.name} ready there`,
      );
      // its own probe admitted it, whether or not it is one of the worker's two probers
      const w = (await meshWorkers(peer)).find((x) => x.worker_id === id);
      expect(w?.observations).toContainEqual({
        node_id: self.node_id,
        status: 'ready',
        at: expect.any(Number),
      });
      const served: string[] = [];
      for (let r = 0; r < 9; r++) served.push(await chat(peer.url, 'a-model', `peer ${i} request ${r}`));
      expect(served, `requests on ${peer.spec.name}`).toContain(engine(url));
    }
  }, 60_000);

  it('PUT /mesh/policies/{model} applies the policy parameters on every peer, validated, across a restart', async () => {
    const put = (body: unknown) =>
      call(`${cluster.peer(1).url}/mesh/policies/p-model`, { method: 'PUT', body });
    const badRange = await put({ policy: 'cache_aware', params: { cache_threshold: 2 } });
    expect(badRange.status).toBe(400);
    expect(badRange.body.error).toMatchObject({
      code: 'invalid_request',
      message: 'params.cache_threshold: must be a number between 0 and 1, got 2',
    });
    const inapplicable = await put({ policy: 'cache_aware', params: { max_idle_secs: 60 } });
    expect(inapplicable.status).toBe(400);
    expect(JSON.stringify(inapplicable.body)).toMatch(/does not apply to cache_aware/);
    expect((await put({ policy: 'cache_aware', params: { nope: 1 } })).status).toBe(400);

    // a long prompt lands on one engine, and every peer learns it
    const system = words(1, 4000);
    const holder = await chat(cluster.peer(0).url, 'p-model', system);
    const holderUrl = tuned.urls.find((u) => engine(u) === holder) as string;
    expect(holderUrl).toBeDefined();
    for (const p of cluster.running())
      await waitFor(async () => (await blocksOf(p, [holderUrl]))[0] > 0, 10_000, `blocks on ${p.spec.name}`);

    // its first 400 characters open every probe below: a match of ~10 %, under the global 0.3
    const ok = await put({ policy: 'cache_aware', params: { cache_threshold: 0.02 } });
    expect(ok).toMatchObject({
      status: 200,
      body: { policy_type: 'cache_aware', config: { cache_threshold: 0.02 } },
    });
    const probe = (n: number) => system.slice(0, 400) + words(100 + n, 3600);
    const check = async (p: MeshPeer, n: number) => {
      await waitFor(
        async () => {
          const r = await call(`${p.url}/mesh/policies/p-model`);
          return JSON.stringify(r.body.config) === '{"cache_threshold":0.02}';
        },
        10_000,
        `parameters on ${p.spec.name}`,
      );
      // with the global threshold each would miss and go to the engine that holds nothing
      expect(await chat(p.url, 'p-model', probe(n)), `probe on ${p.spec.name}`).toBe(holder);
    };
    for (const [i, p] of cluster.running().entries()) await check(p, i);
    await cluster.kill(2, 'SIGTERM');
    await check(await cluster.startPeer(2), 9);
    await cluster.waitConverged(30_000);
  }, 90_000);

  it('POST /flush_cache empties the prefix index on every peer, also one that was down', async () => {
    const urls = flushed.urls;
    const served = new Set<string>();
    for (let c = 0; c < 6; c++)
      served.add(await chat(cluster.peer(c % 3).url, 'f-model', words(200 + c, 1500)));
    const holders = urls.filter((u) => served.has(engine(u)));
    for (const p of cluster.running())
      await waitFor(
        async () => (await blocksOf(p, holders)).every((n) => n > 0),
        10_000,
        `f-model blocks on ${p.spec.name}`,
      );
    // peer 3 goes down with the blocks in its store
    await cluster.kill(2, 'SIGTERM');
    const flush = await call(`${cluster.peer(0).url}/flush_cache`, { method: 'POST' });
    expect(flush.status).toBe(200);
    expect(flush.body.failed).toEqual([]);
    const all = [...base.urls, ...spares.urls, ...urls, ...tuned.urls];
    const empty = async (p: MeshPeer) => (await blocksOf(p, all)).every((n) => n === 0);
    for (const p of cluster.running())
      await waitFor(() => empty(p), 10_000, `index emptied on ${p.spec.name}`);
    // back from its data dir: the flush reaches it by the registry; its stored blocks are void
    const back = await cluster.startPeer(2);
    await cluster.waitConverged(30_000);
    await waitFor(() => empty(back), 15_000, 'index emptied on the restarted peer');
    // (its snapshot of stale blocks, sent on joining, is void on the others too)
    for (const p of cluster.running()) expect(await empty(p), p.spec.name).toBe(true);
    // what is routed after the flush is kept, everywhere
    const after = await chat(back.url, 'f-model', words(300, 1500));
    const servedUrl = urls.find((u) => engine(u) === after) as string;
    for (const p of cluster.running())
      await waitFor(
        async () => (await blocksOf(p, [servedUrl]))[0] > 0,
        10_000,
        `new blocks on ${p.spec.name}`,
      );
  }, 90_000);
});
