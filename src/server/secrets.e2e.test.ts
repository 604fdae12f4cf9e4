/**
 * No secret leaves a node in its logs, traces, data dir or command line. Two real mesh peers on
 * loopback — the cluster key from a key file on one, from the environment on the other — with
 * `--api-key`, tenant keys and control-plane keys (from the environment), debug logs to stdout and
 * `--log-dir` (text on one, JSON on the other) and traces exported to a collector in this test, in
 * front of two mock engines that each require a key of their own. Workers are registered with
 * their `api_key` on both peers; requests go through the official OpenAI client and raw fetch with
 * secret-looking query strings, admin calls read and change the registry, a wrong key is tried.
 * Then every byte of every process's output, every log file, every exported span, every file of
 * every data dir and every process's /proc/<pid>/cmdline is searched for every key of the run
 * (the cluster key as base64 text, base64url, hex and raw bytes): none is found. Controls check
 * that each searched place does hold the run's non-secret text, so an empty search cannot pass.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, spawnSmg, stopAll, waitFor, type Proc } from '../testing/processes.js';

const sha = (s: string) => createHash('sha256').update(s).digest();
/** deterministic, distinct, secret-looking values */
const secret = (name: string) => `sk-${name}-${sha(name).toString('hex').slice(0, 24)}`;

const API_KEY = secret('gateway-api-key');
const TENANT_KEY = secret('tenant-key');
const ADMIN_KEY = secret('control-plane-admin');
const USER_KEY = secret('control-plane-user');
const WORKER_KEYS = [secret('worker-key-one'), secret('worker-key-two')];
const WORKER_KEY_ROTATED = secret('worker-key-rotated');
const QUERY_SECRETS = [
  secret('query-openai'),
  secret('query-fetch'),
  secret('query-admin'),
  secret('query-404'),
];
const WRONG_KEY = secret('wrong-client-key');
const CLUSTER_KEY_BYTES = sha('secrets-e2e cluster key');
const CLUSTER_KEY = CLUSTER_KEY_BYTES.toString('base64');

/** what must never be found, by name */
const NEEDLES: [string, Buffer][] = [
  ...(
    [
      ['--api-key', API_KEY],
      ['tenant key', TENANT_KEY],
      ['admin key', ADMIN_KEY],
      ['user key', USER_KEY],
      ['worker key 1', WORKER_KEYS[0]],
      ['worker key 2', WORKER_KEYS[1]],
      ['rotated worker key', WORKER_KEY_ROTATED],
      ['wrong client key', WRONG_KEY],
      ...QUERY_SECRETS.map((q, i): [string, string] => [`query secret ${i + 1}`, q]),
      ['cluster key (base64)', CLUSTER_KEY],
      ['cluster key (base64url)', CLUSTER_KEY_BYTES.toString('base64url')],
      ['cluster key (hex)', CLUSTER_KEY_BYTES.toString('hex')],
    ] as [string, string][]
  ).map(([n, s]): [string, Buffer] => [n, Buffer.from(s)]),
  ['cluster key (raw bytes)', CLUSTER_KEY_BYTES],
];

function leaks(haystack: Buffer): string[] {
  return NEEDLES.filter(([, needle]) => haystack.includes(needle)).map(([name]) => name);
}

interface Peer {
  name: string;
  url: string;
  proc: Proc;
  /** every byte the process wrote to stdout and stderr */
  output: () => Buffer;
  dataDir: string;
  logDir: string;
}

let root: string;
let collector: http.Server;
const spans: Buffer[] = [];
const peers: Peer[] = [];
const engines: { url: string; proc: Proc; key: string }[] = [];
const cmdlines: [string, Buffer][] = [];

const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' };

function capture(proc: Proc): () => Buffer {
  const chunks: Buffer[] = [];
  proc.child.stdout?.on('data', (b: Buffer) => chunks.push(b));
  proc.child.stderr?.on('data', (b: Buffer) => chunks.push(b));
  return () => Buffer.concat(chunks);
}

async function ok(url: string, headers: Record<string, string> = {}): Promise<boolean> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(2000) });
  await res.arrayBuffer();
  return res.status === 200;
}

async function json<T>(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; body: T; text: string }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let body: T;
  try {
    body = JSON.parse(text) as T;
  } catch {
    body = undefined as T;
  }
  return { status: res.status, body, text };
}

async function startEngine(key: string): Promise<void> {
  const port = await freePort();
  const proc = spawnSmg(
    ['mock-worker', '--port', String(port), '--model', 'mock-model', '--output-tokens', '4'],
    {
      SMG_MOCK_API_KEY: key,
    },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor(() => ok(`${url}/health`), 15_000, `mock ${url}`, proc);
  engines.push({ url, proc, key });
}

async function startPeers(): Promise<void> {
  const ports = [];
  for (let i = 0; i < 2; i++)
    ports.push({ http: await freePort(), prom: await freePort(), mesh: await freePort() });
  const seeds = ports.map((p) => `127.0.0.1:${p.mesh}`).join(',');
  const keyFile = path.join(root, 'cluster.keys');
  writeFileSync(keyFile, `# the cluster key of the secrets test\n${CLUSTER_KEY}\n`, { mode: 0o600 });
  const endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`;
  for (let i = 0; i < 2; i++) {
    const name = `secrets-${i + 1}`;
    const dataDir = path.join(root, 'data', name);
    const logDir = path.join(root, 'logs', name);
    const args = [
      'launch',
      '--host',
      '127.0.0.1',
      '--port',
      String(ports[i].http),
      '--prometheus-host',
      '127.0.0.1',
      '--prometheus-port',
      String(ports[i].prom),
      '--ha-mesh',
      '--mesh-host',
      '127.0.0.1',
      '--mesh-port',
      String(ports[i].mesh),
      '--mesh-node-name',
      name,
      '--seeds',
      seeds,
      '--data-dir',
      dataDir,
      '--log-level',
      'debug',
      '--log-dir',
      logDir,
      ...(i === 1 ? ['--log-json'] : []),
      '--enable-trace',
      '--otlp-traces-endpoint',
      endpoint,
      '--policy',
      'round_robin',
      '--shutdown-grace-period-secs',
      '2',
      // peer 1 reads the cluster key from a file, peer 2 from its environment
      ...(i === 0 ? ['--mesh-cluster-key-file', keyFile] : []),
    ];
    // every key by environment: the command line is what `ps` shows
    const env: NodeJS.ProcessEnv = {
      SMG_API_KEY: API_KEY,
      SMG_TENANT_API_KEY: `team-a:${TENANT_KEY}`,
      CONTROL_PLANE_API_KEYS: `ops:ops:admin:${ADMIN_KEY} viewer:viewer:user:${USER_KEY}`,
      SMG_MESH_CLUSTER_KEY: i === 1 ? CLUSTER_KEY : '',
    };
    const proc = spawnSmg(args, env);
    peers.push({
      name,
      url: `http://127.0.0.1:${ports[i].http}`,
      proc,
      output: capture(proc),
      dataDir,
      logDir,
    });
  }
  for (const p of peers) await waitFor(() => ok(`${p.url}/liveness`), 60_000, `${p.name} liveness`, p.proc);
  await waitFor(
    async () => {
      for (const p of peers) {
        const st = await json<{ nodes: { status: string }[] }>(`${p.url}/mesh/status`, { headers: admin });
        if (st.status !== 200 || st.body.nodes.filter((n) => n.status === 'alive').length !== 2) return false;
      }
      return true;
    },
    60_000,
    'mesh of two',
  );
}

interface WorkerInfoBody {
  id: string;
  url: string;
  status: string;
  [k: string]: unknown;
}

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'smg-secrets-'));
  collector = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      spans.push(Buffer.concat(chunks));
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  await startEngine(WORKER_KEYS[0]);
  await startEngine(WORKER_KEYS[1]);
  await startPeers();
}, 180_000);

afterAll(async () => {
  await stopAll();
  await new Promise<void>((resolve) => collector.close(() => resolve()));
  rmSync(root, { recursive: true, force: true });
});

describe('no secrets in logs, traces, data dirs or argv', () => {
  it('serves a keyed mesh in front of keyed engines, and none of the keys leaks anywhere', async () => {
    const [p1, p2] = peers;
    // one engine registered on each peer, each with its own key; labels are the non-secret control
    const ids: string[] = [];
    for (const [i, e] of engines.entries()) {
      const r = await json<{ worker_id: string }>(`${peers[i].url}/workers`, {
        method: 'POST',
        headers: admin,
        body: JSON.stringify({ url: e.url, api_key: e.key, labels: { marker: `visible-label-${i + 1}` } }),
      });
      expect(r.status, r.text).toBe(202);
      ids.push(r.body.worker_id);
    }
    // both peers know both workers, ready: each opened the other's sealed key to discover its models
    await waitFor(
      async () => {
        for (const p of peers) {
          const r = await json<{ workers: WorkerInfoBody[] }>(`${p.url}/workers`, { headers: admin });
          if (r.status !== 200 || r.body.workers.filter((w) => w.status === 'ready').length !== 2)
            return false;
        }
        return true;
      },
      30_000,
      'both workers ready on both peers',
    );

    // the admin API never shows a worker key
    for (const p of peers) {
      const list = await json<{ workers: WorkerInfoBody[] }>(`${p.url}/workers`, { headers: admin });
      const one = await json<WorkerInfoBody>(`${p.url}/workers/${ids[0]}`, { headers: admin });
      const mesh = await json<unknown>(`${p.url}/mesh/workers`, { headers: admin });
      for (const r of [list, one, mesh]) {
        expect(r.status).toBe(200);
        expect(r.text).not.toMatch(/api_key/);
        expect(leaks(Buffer.from(r.text))).toEqual([]);
      }
      expect(list.body.workers.map((w) => w.labels)).toEqual(
        expect.arrayContaining([{ marker: 'visible-label-1' }, { marker: 'visible-label-2' }]),
      );
    }

    // the official client, with a secret in the query string of every call
    for (const [p, key] of [
      [p1, API_KEY],
      [p2, TENANT_KEY],
    ] as const) {
      const client = new OpenAI({
        baseURL: `${p.url}/v1`,
        apiKey: key,
        defaultQuery: { api_key: QUERY_SECRETS[0] },
        maxRetries: 0,
      });
      for (let i = 0; i < 4; i++) {
        const done = await client.chat.completions.create({
          model: 'mock-model',
          messages: [{ role: 'user', content: `hello ${p.name} ${i}` }],
        });
        expect(done.choices[0].message.content).toBeTruthy();
      }
      const stream = await client.chat.completions.create({
        model: 'mock-model',
        stream: true,
        messages: [{ role: 'user', content: 'stream please' }],
      });
      let chunks = 0;
      for await (const _ of stream) chunks++;
      expect(chunks).toBeGreaterThan(0);
      expect((await client.models.list()).data.map((m) => m.id)).toContain('mock-model');
    }

    // raw fetch: query secrets on inference, public, admin and unknown routes; a wrong key
    const bearer = { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' };
    const chat = JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'raw' }] });
    for (const p of peers) {
      const calls: [string, RequestInit, number][] = [
        [
          `/v1/chat/completions?token=${QUERY_SECRETS[1]}`,
          { method: 'POST', headers: bearer, body: chat },
          200,
        ],
        [`/v1/models?token=${QUERY_SECRETS[1]}`, { headers: bearer }, 200],
        [`/health?token=${QUERY_SECRETS[1]}`, {}, 200],
        [`/workers?api_key=${QUERY_SECRETS[2]}`, { headers: admin }, 200],
        [`/mesh/status?api_key=${QUERY_SECRETS[2]}`, { headers: admin }, 200],
        [`/engine_metrics?api_key=${QUERY_SECRETS[2]}`, { headers: admin }, 200],
        [`/no/such/route?secret=${QUERY_SECRETS[3]}`, { headers: bearer }, 404],
        [
          `/v1/chat/completions?token=${QUERY_SECRETS[1]}`,
          { method: 'POST', headers: { ...bearer, authorization: `Bearer ${WRONG_KEY}` }, body: chat },
          401,
        ],
        // a user-role key is refused on admin routes
        [`/workers?api_key=${QUERY_SECRETS[2]}`, { headers: { authorization: `Bearer ${USER_KEY}` } }, 403],
      ];
      for (const [route, init, status] of calls) {
        const r = await json<unknown>(`${p.url}${route}`, init);
        expect(r.status, `${p.name} ${route}: ${r.text.slice(0, 200)}`).toBe(status);
      }
    }

    // admin writes: a peer changes a worker registered on the other, then its key
    const patched = await json<unknown>(`${p2.url}/workers/${ids[0]}`, {
      method: 'PATCH',
      headers: admin,
      body: JSON.stringify({ priority: 60 }),
    });
    expect(patched.status, patched.text).toBe(202);
    // both engines served both peers with their keys: not a single call reached one without it
    for (const e of engines) {
      const st = await json<{ requests: number; unauthorized: number }>(`${e.url}/mock/stats`);
      expect(st.body.unauthorized, e.url).toBe(0);
      expect(st.body.requests, e.url).toBeGreaterThan(0);
    }
    // a key rotation on the worker: the new key is sealed too (the engine keeps its old one, so
    // the next calls would fail: nothing is sent to it afterwards)
    const rotated = await json<unknown>(`${p1.url}/workers/${ids[1]}`, {
      method: 'PATCH',
      headers: admin,
      body: JSON.stringify({ api_key: WORKER_KEY_ROTATED }),
    });
    expect(rotated.status, rotated.text).toBe(202);

    // spans of both peers reached the collector
    await waitFor(async () => spans.length > 0, 20_000, 'exported spans');

    // the command lines, while the processes run
    for (const p of [...peers.map((x) => x.proc), ...engines.map((e) => e.proc)]) {
      const cmdline = readFileSync(`/proc/${p.child.pid}/cmdline`);
      cmdlines.push([String(p.child.pid), cmdline]);
    }
    expect(cmdlines.some(([, c]) => c.includes('--mesh-cluster-key-file'))).toBe(true);

    // a clean stop writes out the last log lines and spans
    for (const p of peers) expect(await p.proc.stop('SIGTERM')).toBe(0);

    // --- the search -------------------------------------------------------------------------
    const found: string[] = [];
    const search = (where: string, bytes: Buffer) => {
      for (const name of leaks(bytes)) found.push(`${name} in ${where}`);
    };
    for (const [pid, c] of cmdlines) search(`/proc/${pid}/cmdline`, c);
    for (const p of peers) {
      const out = p.output();
      search(`${p.name} stdout+stderr`, out);
      // the controls: the run's requests are in the output, at debug level too, with their paths
      expect(out.includes('request completed'), `${p.name} output`).toBe(true);
      expect(out.includes('/v1/chat/completions'), `${p.name} output`).toBe(true);
      expect(out.includes('DEBUG') || out.includes('"level":20'), `${p.name} debug lines`).toBe(true);
      // one file per UTC day (two if the run crossed midnight)
      const logFiles = readdirSync(p.logDir).sort();
      expect(logFiles.length, p.name).toBeGreaterThanOrEqual(1);
      for (const f of logFiles) expect(f, p.name).toMatch(/^smg\.\d{4}-\d\d-\d\d\.log$/);
      const logged = Buffer.concat(logFiles.map((f) => readFileSync(path.join(p.logDir, f))));
      search(`${p.name} log files`, logged);
      // the file holds the same lines as stdout (stderr aside), up to the last one
      expect(logged.includes('gateway closed'), `${p.name} last line in the file`).toBe(true);
      expect(out.includes('gateway closed'), `${p.name} last line on stdout`).toBe(true);
    }
    const exported = Buffer.concat(spans);
    search('exported spans', exported);
    expect(exported.includes('/v1/chat/completions')).toBe(true);
    expect(exported.includes('/workers')).toBe(true);
    let dataBytes = 0;
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const file = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(file);
        else if (entry.isFile()) {
          const bytes = readFileSync(file);
          dataBytes += bytes.length;
          files.push(path.relative(root, file));
          search(path.relative(root, file), bytes);
        }
      }
    };
    for (const p of peers) {
      walk(p.dataDir);
      // with a cluster key the node keeps no key of its own
      expect(existsSync(path.join(p.dataDir, 'sealing.key')), p.name).toBe(false);
    }
    expect(files.some((f) => f.endsWith('state.db'))).toBe(true);
    // the control: the registry is in there, in clear where it is not secret
    const everything = Buffer.concat(files.map((f) => readFileSync(path.join(root, f))));
    for (const label of ['visible-label-1', 'visible-label-2', engines[0].url, engines[1].url])
      expect(everything.includes(label), `${label} in the data dirs`).toBe(true);
    expect(dataBytes).toBeGreaterThan(0);
    expect(found).toEqual([]);
  }, 240_000);
});
