/**
 * The image and the compose cluster, run for real: `docker-compose.yml` unchanged (its three
 * peers on the compose network, published on :30000, :30010 and :30020), the `smg:local` image
 * built from the real `Dockerfile` (`npm run test:deploy` builds the base image stand-in and the
 * image, then runs this file). Clients are the official `openai` SDK from the host.
 *
 * Checks: the healthchecks report healthy; the peers form one mesh; every peer serves chat
 * completions; a failover client sees no failed request while one peer is `docker kill`ed and
 * another is `docker compose restart`ed; the restarted peer (and the killed one, started again)
 * come back with their volume's identity and registry; `down` then `up` keeps every peer's state.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const here = path.dirname(fileURLToPath(import.meta.url));
/** the repository (this file runs from chaos/deploy or dist/chaos/deploy) */
const ROOT = path.resolve(here, here.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..');
const PROJECT = `smgdeploy${process.pid}`;
const KEY = randomBytes(32).toString('base64');
const PEERS = [
  { service: 'smg-1', port: 30000 },
  { service: 'smg-2', port: 30010 },
  { service: 'smg-3', port: 30020 },
] as const;
const SERVICES = ['mock', ...PEERS.map((p) => p.service)];
const MODEL = 'mock-model';
/** a worker only the admin API adds (the mock engine does not listen there: it stays pending) */
const ADDED_WORKER = 'http://mock:8009';
const CONFIG_KEY = 'deploy.test';

interface Run {
  code: number;
  out: string;
}

function run(cmd: string, args: string[], timeoutMs = 180_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, SMG_MESH_CLUSTER_KEY: KEY },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, out });
    });
  });
}

/** docker compose v2 when the client has it, else Debian's docker-compose (v1) */
let composeCmd: string[] = [];
async function compose(...args: string[]): Promise<string> {
  const r = await run(composeCmd[0], [
    ...composeCmd.slice(1),
    '-p',
    PROJECT,
    '-f',
    'docker-compose.yml',
    ...args,
  ]);
  if (r.code !== 0) throw new Error(`compose ${args.join(' ')} exited ${r.code}:\n${r.out}`);
  return r.out;
}

async function containerOf(service: string): Promise<string> {
  const id = (await compose('ps', '-q', service)).trim();
  if (!id) throw new Error(`no container for ${service}`);
  return id;
}

async function health(service: string): Promise<string> {
  const r = await run('docker', ['inspect', '-f', '{{.State.Health.Status}}', await containerOf(service)]);
  return r.out.trim();
}

async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms ${last}`);
}

async function getJson(port: number, p: string): Promise<unknown> {
  const res = await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`GET ${p} on :${port}: ${res.status}`);
  return res.json();
}

interface MeshStatus {
  node_name: string;
  nodes: { name: string; status: string; node_id: string; incarnation: number; self: boolean }[];
}

async function meshStatus(port: number): Promise<MeshStatus> {
  return (await getJson(port, '/mesh/status')) as MeshStatus;
}

/** every listed peer healthy and seeing all three alive */
async function waitForCluster(): Promise<void> {
  await waitFor('healthchecks healthy', 180_000, async () => {
    for (const s of SERVICES) if ((await health(s)) !== 'healthy') return undefined;
    return true;
  });
  await waitFor('one mesh of three alive peers', 120_000, async () => {
    for (const p of PEERS) {
      const st = await meshStatus(p.port);
      if (st.nodes.filter((n) => n.status === 'alive').length !== 3) return undefined;
    }
    return true;
  });
}

/** each peer's node id and incarnation, as the peer itself reports them */
async function identities(): Promise<Map<string, { id: string; incarnation: number }>> {
  const ids = new Map<string, { id: string; incarnation: number }>();
  for (const p of PEERS) {
    const self = (await meshStatus(p.port)).nodes.find((n) => n.self);
    if (!self) throw new Error(`${p.service} does not list itself`);
    ids.set(p.service, { id: self.node_id, incarnation: self.incarnation });
  }
  return ids;
}

function client(port: number): OpenAI {
  // no SDK retries: the failover below is the only second chance a request gets
  return new OpenAI({
    baseURL: `http://127.0.0.1:${port}/v1`,
    apiKey: 'unused',
    maxRetries: 0,
    timeout: 15_000,
  });
}

/**
 * A failover client, as behind DNS round-robin: each request goes to the next peer in turn, and
 * on a connection error or a 503 to the peer after it (every peer once). A request fails only
 * when no peer served it.
 */
function failoverLoad(): { stop(): Promise<{ ok: number; failed: string[] }> } {
  const clients = PEERS.map((p) => client(p.port));
  let running = true;
  let ok = 0;
  const failed: string[] = [];
  let turn = 0;
  const one = async (): Promise<void> => {
    const start = turn++;
    let lastErr = '';
    for (let k = 0; k < clients.length; k++) {
      const c = clients[(start + k) % clients.length];
      try {
        const r = await c.chat.completions.create({
          model: MODEL,
          messages: [{ role: 'user', content: `request ${start}` }],
          max_tokens: 4,
        });
        if (!r.choices[0]?.message.content) throw new Error('empty completion');
        ok++;
        return;
      } catch (err) {
        lastErr = String(err);
        const retryable =
          err instanceof OpenAI.APIConnectionError || (err instanceof OpenAI.APIError && err.status === 503);
        if (!retryable) break;
      }
    }
    failed.push(lastErr);
  };
  const loops = Array.from({ length: 4 }, async () => {
    while (running) await one();
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return { ok, failed };
    },
  };
}

async function workersOn(port: number): Promise<string[]> {
  const body = (await getJson(port, '/workers')) as { workers: { url: string }[] };
  return body.workers.map((w) => w.url);
}

beforeAll(async () => {
  const v2 = await run('docker', ['compose', 'version']);
  composeCmd = v2.code === 0 ? ['docker', 'compose'] : ['docker-compose'];
  const image = await run('docker', ['image', 'inspect', 'smg:local']);
  if (image.code !== 0) throw new Error('no smg:local image: run `npm run test:deploy`, which builds it');
  await compose('up', '-d', '--no-build');
  await waitForCluster();
}, 420_000);

afterAll(async () => {
  if (composeCmd.length === 0) return;
  const logs = await run(composeCmd[0], [...composeCmd.slice(1), '-p', PROJECT, 'logs', '--tail', '30']);
  if (process.env.SMG_DEPLOY_LOGS) console.log(logs.out);
  await compose('down', '-v', '--remove-orphans');
}, 180_000);

describe('docker compose: three smg peers from the real image', () => {
  let before: Map<string, { id: string; incarnation: number }>;

  it('every peer serves chat completions (the openai client, plain and streaming) and admin writes replicate', async () => {
    for (const p of PEERS) {
      const c = client(p.port);
      const r = await c.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: `hello ${p.service}` }],
        max_tokens: 4,
      });
      expect(r.choices[0].message.content).toBeTruthy();
      let text = '';
      const stream = await c.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'stream please' }],
        max_tokens: 4,
        stream: true,
      });
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
      expect(text).toBeTruthy();
    }
    // written on one peer, seen on every peer
    const add = await fetch('http://127.0.0.1:30000/workers', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: ADDED_WORKER, model_id: MODEL, labels: { added: 'deploy-test' } }),
    });
    expect(add.status).toBe(202);
    const cfg = await fetch('http://127.0.0.1:30010/mesh/config', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: CONFIG_KEY, value: 'c0ffee' }),
    });
    expect(cfg.status).toBe(200);
    await waitFor('the writes on every peer', 60_000, async () => {
      for (const p of PEERS) {
        if (!(await workersOn(p.port)).includes(ADDED_WORKER)) return undefined;
        await getJson(p.port, `/mesh/config/${CONFIG_KEY}`);
      }
      return true;
    });
    before = await identities();
  }, 120_000);

  it('docker kill of one peer: the failover client sees no failed request; started again, it is the same node', async () => {
    const load = failoverLoad();
    await new Promise((r) => setTimeout(r, 2_000));
    const killed = await run('docker', ['kill', await containerOf('smg-1')]);
    expect(killed.code).toBe(0);
    // the survivors declare it dead while traffic goes on
    await waitFor('smg-1 dead on the survivors', 60_000, async () => {
      for (const p of PEERS.slice(1)) {
        const n = (await meshStatus(p.port)).nodes.find((x) => x.name === 'smg-1');
        if (n && n.status === 'alive') return undefined;
      }
      return true;
    });
    await new Promise((r) => setTimeout(r, 2_000));
    const { ok, failed } = await load.stop();
    expect(failed).toEqual([]);
    expect(ok).toBeGreaterThan(20);

    await compose('start', 'smg-1');
    await waitForCluster();
    const after = await identities();
    expect(after.get('smg-1')?.id).toBe(before.get('smg-1')?.id);
    expect(after.get('smg-1')!.incarnation).toBeGreaterThan(before.get('smg-1')!.incarnation);
  }, 300_000);

  it('docker compose restart of another peer under load: no failed request; it comes back with its identity and registry', async () => {
    const load = failoverLoad();
    await new Promise((r) => setTimeout(r, 2_000));
    await compose('restart', 'smg-2');
    await waitForCluster();
    const { ok, failed } = await load.stop();
    expect(failed).toEqual([]);
    expect(ok).toBeGreaterThan(20);
    const after = await identities();
    expect(after.get('smg-2')?.id).toBe(before.get('smg-2')?.id);
    expect(after.get('smg-2')!.incarnation).toBeGreaterThan(before.get('smg-2')!.incarnation);
    expect(await workersOn(30010)).toContain(ADDED_WORKER);
  }, 300_000);

  it('docker compose down, then up: every peer keeps its identity, the registry and the config', async () => {
    const ids = await identities();
    await compose('down');
    await compose('up', '-d', '--no-build');
    await waitForCluster();
    const after = await identities();
    for (const p of PEERS) {
      expect(after.get(p.service)?.id).toBe(ids.get(p.service)?.id);
      expect(after.get(p.service)!.incarnation).toBeGreaterThan(ids.get(p.service)!.incarnation);
      expect(await workersOn(p.port)).toContain(ADDED_WORKER);
      expect(await getJson(p.port, `/mesh/config/${CONFIG_KEY}`)).toMatchObject({ value: 'c0ffee' });
    }
    for (const s of SERVICES) expect(await health(s)).toBe('healthy');
    // and they serve
    const r = await client(30020).chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'after down and up' }],
      max_tokens: 4,
    });
    expect(r.choices[0].message.content).toBeTruthy();
  }, 420_000);
});
