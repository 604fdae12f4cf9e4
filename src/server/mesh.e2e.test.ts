/**
 * The HA mesh with real processes: three `smg --ha-mesh` peers on loopback, mock engines, the
 * official openai client. Joining through seeds, replicated writes, convergence of concurrent
 * writes, kill -9 detection, restart from the data dir, a keyless or wrong-key process kept out,
 * hostile datagrams and connections survived.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateClusterKey } from '../../mesh/swim/keyring.js';
import { MeshCluster, memberState, meshStatus, workerUrls } from '../testing/mesh-cluster.js';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  freePort,
  spawnSmg,
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type MockFleetProc,
} from '../testing/processes.js';

let mocks: MockFleetProc;
let cluster: MeshCluster;

/**
 * How long a registry write may take to reach every peer: gossip delivers it in milliseconds, and
 * a lost message is repaired by Automerge sync with a random peer every 10 s (mesh/runtime.ts), so
 * the bound is two sync rounds and then some. A wait ends as soon as its condition holds.
 */
const REPLICATION_MS = 30_000;

async function json(url: string, init?: RequestInit): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, {
    ...init,
    headers: { 'content-type': 'application/json', ...(init?.headers ?? {}) },
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

async function workerIds(url: string): Promise<string[]> {
  const { body } = await json(`${url}/workers`);
  return (body as { workers: { id: string; url: string }[] }).workers.map((w) => `${w.url}=${w.id}`).sort();
}

async function metric(url: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') || !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

beforeAll(async () => {
  mocks = await startMockFleet(6, ['--model', 'mesh-model', '--ttft-ms', '1', '--output-tokens', '4']);
  cluster = new MeshCluster(3, { firstExtra: ['--worker-urls', mocks.urls[0]] });
  await cluster.start();
  await cluster.waitConverged(30_000);
}, 60_000);

afterAll(async () => {
  await cluster?.stop();
  await stopAll();
});

describe('HA mesh (three real peers)', () => {
  it('peers join through seeds and report each other alive in /mesh/status', async () => {
    for (const p of cluster.running()) {
      const st = await meshStatus(p.url);
      expect(st.node_name).toBe(p.spec.name);
      expect(st.node_count).toBe(3);
      expect(st.nodes.map((n) => [n.name, n.status])).toEqual([
        ['peer-1', 'alive'],
        ['peer-2', 'alive'],
        ['peer-3', 'alive'],
      ]);
      expect(st.nodes.every((n) => n.connected)).toBe(true);
      const health = await json(`${p.url}/mesh/health`);
      expect(health).toMatchObject({
        status: 200,
        body: { status: 'healthy', cluster_size: 3, joined: true },
      });
    }
  });

  it('a worker given to one peer at start is registered on every peer and serves through any of them', async () => {
    for (const p of cluster.running())
      await waitFor(
        async () => (await workerUrls(p.url)).includes(mocks.urls[0]),
        REPLICATION_MS,
        `worker on ${p.spec.name}`,
      );
    const peer3 = cluster.peer(2);
    await waitFor(
      async () =>
        ((await json(`${peer3.url}/mesh/workers`)).body as { health: string }[])[0]?.health === 'ready',
      REPLICATION_MS,
      'worker ready on peer 3 (probed by peer 3 itself)',
    );
    const client = new OpenAI({ baseURL: `${peer3.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const r = await client.chat.completions.create({
      model: 'mesh-model',
      messages: [{ role: 'user', content: 'hello mesh' }],
    });
    expect(r.choices[0].message.content?.length).toBeGreaterThan(0);
  }, 120_000);

  it('admin writes on any peer reach every peer: workers, config, model policies', async () => {
    const [p1, p2, p3] = cluster.running();
    const add = await json(`${p3.url}/workers`, {
      method: 'POST',
      body: JSON.stringify({ url: mocks.urls[1] }),
    });
    expect(add.status).toBe(202);
    const cfg = await json(`${p1.url}/mesh/config`, {
      method: 'POST',
      body: JSON.stringify({ key: 'feature.x', value: 'c0ffee' }),
    });
    expect(cfg).toEqual({ status: 200, body: { status: 'updated', key: 'feature.x' } });
    const pol = await json(`${p2.url}/mesh/policies/mesh-model`, {
      method: 'PUT',
      body: JSON.stringify({ policy: 'round_robin' }),
    });
    expect(pol.status).toBe(200);
    for (const p of [p1, p2, p3]) {
      await waitFor(
        async () => (await workerUrls(p.url)).includes(mocks.urls[1]),
        REPLICATION_MS,
        `POST seen by ${p.spec.name}`,
      );
      await waitFor(
        async () => (await json(`${p.url}/mesh/config/feature.x`)).status === 200,
        REPLICATION_MS,
        `config seen by ${p.spec.name}`,
      );
      expect((await json(`${p.url}/mesh/config/feature.x`)).body).toEqual({
        key: 'feature.x',
        value: 'c0ffee',
        format: 'hex',
      });
      await waitFor(
        async () => {
          const r = await json(`${p.url}/mesh/policies/mesh-model`);
          return r.status === 200 && (r.body as { policy_type: string }).policy_type === 'round_robin';
        },
        REPLICATION_MS,
        `policy seen by ${p.spec.name}`,
      );
    }
    // PATCH and DELETE on peers other than the one that registered the worker
    const target = mocks.urls[5];
    const reg = await json(`${p3.url}/workers`, {
      method: 'POST',
      body: JSON.stringify({ url: target, health: { drain_settle_secs: 0 } }),
    });
    const id = (reg.body as { worker_id: string }).worker_id;
    await waitFor(
      async () => (await workerUrls(p1.url)).includes(target),
      REPLICATION_MS,
      'new worker on peer 1',
    );
    const patched = await json(`${p1.url}/workers/${id}`, {
      method: 'PATCH',
      body: JSON.stringify({ priority: 7 }),
    });
    expect(patched.status).toBeLessThan(300);
    await waitFor(
      async () => {
        const { body } = await json(`${p2.url}/workers/${id}`);
        return (body as { priority?: number }).priority === 7;
      },
      REPLICATION_MS,
      'PATCH from peer 1 seen on peer 2',
    );
    const del = await json(`${p2.url}/workers/${id}`, { method: 'DELETE' });
    expect(del.status).toBeLessThan(300);
    for (const p of [p1, p2, p3])
      await waitFor(
        async () => !(await workerUrls(p.url)).includes(target),
        REPLICATION_MS,
        `DELETE seen by ${p.spec.name}`,
      );
    // bad admin input: clear 400s, nothing written
    expect(
      (await json(`${p1.url}/mesh/config`, { method: 'POST', body: '{"key":"k","value":"abc"}' })).status,
    ).toBe(400);
    expect((await json(`${p1.url}/mesh/config`, { method: 'POST', body: 'not json' })).status).toBe(400);
    expect(
      (await json(`${p1.url}/mesh/policies/m`, { method: 'PUT', body: '{"policy":"nope"}' })).status,
    ).toBe(400);
    expect((await json(`${p1.url}/mesh/workers/unknown`)).status).toBe(404);
  }, 120_000);

  it('concurrent writes on different peers converge to one registry (same URL twice → one worker)', async () => {
    const peers = cluster.running();
    await Promise.all([
      json(`${peers[0].url}/workers`, { method: 'POST', body: JSON.stringify({ url: mocks.urls[2] }) }),
      json(`${peers[1].url}/workers`, { method: 'POST', body: JSON.stringify({ url: mocks.urls[2] }) }),
      json(`${peers[2].url}/workers`, { method: 'POST', body: JSON.stringify({ url: mocks.urls[3] }) }),
      json(`${peers[0].url}/mesh/config`, {
        method: 'POST',
        body: JSON.stringify({ key: 'race', value: '01' }),
      }),
      json(`${peers[1].url}/mesh/config`, {
        method: 'POST',
        body: JSON.stringify({ key: 'race', value: '02' }),
      }),
    ]);
    await waitFor(
      async () => {
        const views = await Promise.all(peers.map((p) => workerIds(p.url)));
        const configs = await Promise.all(
          peers.map(async (p) => JSON.stringify((await json(`${p.url}/mesh/config`)).body)),
        );
        return (
          views.every((v) => v.join() === views[0].join()) &&
          views[0].filter((w) => w.startsWith(`${mocks.urls[2]}=`)).length === 1 &&
          views[0].some((w) => w.startsWith(`${mocks.urls[3]}=`)) &&
          configs.every((c) => c === configs[0])
        );
      },
      REPLICATION_MS,
      'convergence of concurrent writes',
    );
  }, 120_000);

  it('hostile datagrams and connections are dropped and counted; the peer keeps working', async () => {
    const p1 = cluster.peer(0);
    const before = await metric(p1.metricsUrl, 'smg_mesh_dropped_packets_total', 'transport="udp"');
    const sock = dgram.createSocket('udp4');
    const send = (b: Buffer) =>
      new Promise<void>((r) => sock.send(b, p1.spec.meshPort, p1.spec.host, () => r()));
    await send(Buffer.from('garbage that is no sealed packet at all'));
    await send(Buffer.alloc(0));
    await send(Buffer.concat([Buffer.from([1]), Buffer.alloc(60, 7)])); // right version, wrong key
    await send(Buffer.alloc(9000, 1)); // larger than any SWIM packet
    sock.close();
    // junk on the libp2p TCP port: the private-network handshake fails, the connection is closed
    await new Promise<void>((resolve) => {
      const c = net.connect(p1.spec.meshPort, p1.spec.host, () => c.end(Buffer.alloc(4096, 0xab)));
      c.on('close', () => resolve());
      c.on('error', () => resolve());
      c.setTimeout(3000, () => c.destroy());
    });
    await waitFor(
      async () =>
        (await metric(p1.metricsUrl, 'smg_mesh_dropped_packets_total', 'transport="udp"')) >= before + 4,
      5_000,
      'drops counted',
    );
    expect(
      await metric(p1.metricsUrl, 'smg_mesh_dropped_packets_total', 'reason="oversized"'),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await metric(p1.metricsUrl, 'smg_mesh_dropped_packets_total', 'reason="auth"'),
    ).toBeGreaterThanOrEqual(1);
    expect((await meshStatus(p1.url)).node_count).toBe(3);
  });

  it('a process with the wrong key, or none, can neither join nor read state', async () => {
    const p1 = cluster.peer(0);
    /** a process that points its seeds at the cluster, with the given key flags */
    const outsider = async (name: string, keyArgs: string[]) =>
      startGatewayProc(
        [
          '--ha-mesh',
          '--mesh-host',
          '127.0.0.1',
          '--mesh-port',
          String(await freePort()),
          '--mesh-node-name',
          name,
          '--data-dir',
          `${cluster.root}/${name}`,
          '--seeds',
          cluster.seeds(),
          ...keyArgs,
        ],
        { waitReady: false },
      );
    const wrong = await outsider('intruder', ['--mesh-cluster-key', generateClusterKey()]);
    const keyless = await outsider('keyless', []);
    try {
      await new Promise((r) => setTimeout(r, 4000));
      for (const outsider of [wrong, keyless]) {
        const st = await meshStatus(outsider.url);
        expect(st.node_count).toBe(1);
        expect(await workerUrls(outsider.url)).toEqual([]);
        expect((await json(`${outsider.url}/mesh/config`)).body).toEqual({});
      }
      for (const p of cluster.running()) {
        const names = (await meshStatus(p.url)).nodes.map((n) => n.name);
        expect(names).not.toContain('intruder');
        expect(names).not.toContain('keyless');
      }
      expect(await metric(p1.metricsUrl, 'smg_mesh_dropped_packets_total', 'reason="auth"')).toBeGreaterThan(
        1,
      );
    } finally {
      await wrong.stop();
      await keyless.stop();
    }
  }, 30_000);

  it('kill -9 of a peer is detected by every survivor; the restarted peer serves its stored registry, then catches up', async () => {
    const victim = 1;
    const before = await workerIds(cluster.peer(victim).url);
    await cluster.kill(victim, 'SIGKILL');
    const killedAt = Date.now();
    for (const p of cluster.running())
      await waitFor(
        async () => (await memberState(p.url, 'peer-2')) === 'dead',
        20_000,
        `peer-2 dead on ${p.spec.name}`,
      );
    const detectMs = Date.now() - killedAt;
    expect(detectMs).toBeGreaterThan(0);
    // writes while it is down
    const p1 = cluster.peer(0);
    await json(`${p1.url}/workers`, { method: 'POST', body: JSON.stringify({ url: mocks.urls[4] }) });
    await json(`${p1.url}/mesh/config`, {
      method: 'POST',
      body: JSON.stringify({ key: 'while-down', value: 'aa' }),
    });
    // restart without seeds: it serves what it stored at once, and rejoins through the members it stored
    const restarted = await cluster.startPeer(victim, [], { seeds: false });
    const atStart = await workerIds(restarted.url);
    for (const w of before) expect(atStart).toContain(w);
    await waitFor(
      async () => (await workerUrls(restarted.url)).includes(mocks.urls[4]),
      20_000,
      'restarted peer caught up',
    );
    expect((await json(`${restarted.url}/mesh/config/while-down`)).status).toBe(200);
    await cluster.waitConverged(20_000);
    const st = await meshStatus(restarted.url);
    expect(st.nodes.find((n) => n.self)?.incarnation).toBeGreaterThan(1);
  }, 60_000);

  it('graceful leave: /mesh/shutdown makes the others see "left", not "dead"', async () => {
    const p3 = cluster.peer(2);
    const r = await json(`${p3.url}/mesh/shutdown`, { method: 'POST' });
    expect(r).toMatchObject({ status: 202, body: { status: 'shutdown initiated' } });
    for (const p of cluster.running().filter((x) => x !== p3))
      await waitFor(
        async () => (await memberState(p.url, 'peer-3')) === 'left',
        10_000,
        `left seen by ${p.spec.name}`,
      );
  }, 20_000);
});

describe('mesh flags and files at start-up', () => {
  it('a corrupt data dir stops start-up with a clear message, the file untouched', async () => {
    const dir = mkdtempSync(`${tmpdir()}/smg-corrupt-`);
    writeFileSync(`${dir}/state.db`, 'this is not a database');
    const p = spawnSmg([
      '--ha-mesh',
      '--mesh-port',
      String(await freePort()),
      '--data-dir',
      dir,
      '--port',
      String(await freePort()),
      '--prometheus-port',
      String(await freePort()),
    ]);
    const code = await new Promise<number | null>((r) => p.child.once('exit', (c) => r(c)));
    expect(code).toBe(1);
    expect(p.output()).toMatch(/smg: .*state\.db/);
    expect(readFileSync(`${dir}/state.db`, 'utf8')).toBe('this is not a database');
  });

  it('/mesh/* is under control-plane auth; a node without --ha-mesh answers 503 mesh_disabled', async () => {
    const dir = mkdtempSync(`${tmpdir()}/smg-auth-`);
    const gw = await startGatewayProc(
      [
        '--ha-mesh',
        '--mesh-port',
        String(await freePort()),
        '--mesh-node-name',
        'solo',
        '--data-dir',
        dir,
        '--control-plane-api-keys',
        'ops:Ops:admin:admin-key',
        'viewer:Viewer:user:user-key',
      ],
      { waitReady: false },
    );
    const plain = await startGatewayProc([], { waitReady: false });
    try {
      expect((await json(`${gw.url}/mesh/status`)).status).toBe(401);
      const ok = await json(`${gw.url}/mesh/status`, { headers: { authorization: 'Bearer admin-key' } });
      expect(ok).toMatchObject({ status: 200, body: { node_name: 'solo', node_count: 1 } });
      const denied = await json(`${gw.url}/mesh/config`, {
        method: 'POST',
        headers: { authorization: 'Bearer user-key' },
        body: JSON.stringify({ key: 'k', value: '00' }),
      });
      expect(denied.status).toBe(403);
      expect(await json(`${plain.url}/mesh/status`)).toMatchObject({
        status: 503,
        body: { error: { code: 'mesh_disabled' } },
      });
    } finally {
      await gw.stop();
      await plain.stop();
    }
  });

  it('a mesh on a public address without a key is refused', async () => {
    const p = spawnSmg(['--ha-mesh', '--mesh-host', '0.0.0.0']);
    const code = await new Promise<number | null>((r) => p.child.once('exit', (c) => r(c)));
    expect(code).toBe(2);
    expect(p.output()).toMatch(/--mesh-cluster-key/);
  });
});
