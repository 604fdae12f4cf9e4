/**
 * Every node keeps its state, with real processes: a gateway without `--ha-mesh` opens its SQLite
 * store by default (`./.smg/<hostname>-<port>`), so workers added over the API and the prefix index
 * survive a restart; the data dir's lock lets exactly one of two simultaneous starters run.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  freePort,
  spawnSmg,
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type GatewayProc,
  type MockFleetProc,
  type Proc,
} from '../testing/processes.js';

const MODEL = 'state-model';
let mocks: MockFleetProc;
const roots: string[] = [];

function tempDir(prefix: string): string {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  roots.push(d);
  return d;
}

beforeAll(async () => {
  mocks = await startMockFleet(2, ['--model', MODEL, '--ttft-ms', '1', '--output-tokens', '4']);
}, 30_000);

afterAll(async () => {
  await stopAll();
  for (const d of roots) rmSync(d, { recursive: true, force: true });
});

interface WorkerInfo {
  id: string;
  url: string;
  status: string;
}

async function workers(url: string): Promise<WorkerInfo[]> {
  const res = await fetch(`${url}/workers`, { signal: AbortSignal.timeout(5000) });
  const body = (await res.json()) as { workers: WorkerInfo[] };
  return body.workers.sort((a, b) => (a.url < b.url ? -1 : 1));
}

async function addWorker(url: string, workerUrl: string): Promise<string> {
  const res = await fetch(`${url}/workers`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ url: workerUrl }),
  });
  expect(res.status).toBe(202);
  return ((await res.json()) as { worker_id: string }).worker_id;
}

/** a long, distinct system prompt per conversation (so its prefix blocks are its own) */
function systemPrompt(c: number): string {
  const words = [];
  for (let i = 0; i < 120; i++) words.push(`s${c}w${(i * 7919 + c * 104729) % 100_003}`);
  return words.join(' ');
}

/** one turn of conversation `c` through `url`; returns the engine that served it */
async function turnOf(url: string, c: number, turn: number): Promise<string> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 20_000 });
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'system', content: systemPrompt(c) }];
  for (let t = 0; t <= turn; t++) {
    messages.push({ role: 'user', content: `question ${t} of conversation ${c}` });
    if (t < turn) messages.push({ role: 'assistant', content: `answer ${t}` });
  }
  const { response } = await client.chat.completions
    .create({ model: MODEL, messages, max_tokens: 4 })
    .withResponse();
  return response.headers.get('x-mock-worker') ?? '?';
}

function exitOf(p: Proc): Promise<number | null> {
  if (p.child.exitCode !== null) return Promise.resolve(p.child.exitCode);
  return new Promise((r) => p.child.once('exit', (code) => r(code)));
}

describe('a node without --ha-mesh keeps its state', () => {
  it('workers added with POST /workers and the prefix index survive a restart', async () => {
    const dataDir = path.join(tempDir('smg-state-'), 'node');
    const port = await freePort();
    const args = ['--port', String(port), '--policy', 'cache_aware', '--data-dir', dataDir];
    let gw: GatewayProc = await startGatewayProc(args, { waitReady: false });
    const ids = [await addWorker(gw.url, mocks.urls[0]), await addWorker(gw.url, mocks.urls[1])];
    await waitFor(
      async () => (await workers(gw.url)).every((w) => w.status === 'ready'),
      20_000,
      'added workers ready',
    );
    const CONVERSATIONS = 8;
    const served: string[] = [];
    for (let c = 0; c < CONVERSATIONS; c++) served.push(await turnOf(gw.url, c, 0));
    // the load-aware fallback spread the first turns, so a lost index would show
    expect(new Set(served).size).toBe(2);
    expect(await gw.stop()).toBe(0);

    gw = await startGatewayProc(args);
    const restored = await workers(gw.url);
    expect(restored.map((w) => w.id).sort()).toEqual([...ids].sort());
    expect(restored.map((w) => w.url)).toEqual([...mocks.urls].sort());
    // in another order than before: without the restored index the fallback would alternate
    // differently and send conversations elsewhere
    for (let c = CONVERSATIONS - 1; c >= 0; c--) expect(await turnOf(gw.url, c, 1)).toBe(served[c]);
    await gw.stop();
  }, 90_000);

  it('two gateways started in one directory on different ports get their own default data dirs', async () => {
    const cwd = tempDir('smg-cwd-');
    const [a, b] = await Promise.all([
      startGatewayProc(['--worker-urls', mocks.urls[0]], { cwd }),
      startGatewayProc(['--worker-urls', mocks.urls[1]], { cwd }),
    ]);
    try {
      const host =
        hostname()
          .split('.')[0]
          .replace(/[^A-Za-z0-9_-]/g, '-')
          .slice(0, 50) || 'smg';
      const names = [a, b].map((g) => `${host}-${new URL(g.url).port}`);
      expect(readdirSync(path.join(cwd, '.smg')).sort()).toEqual([...names].sort());
      for (const n of names) expect(existsSync(path.join(cwd, '.smg', n, 'state.db'))).toBe(true);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  }, 60_000);

  it('--data-dir none keeps nothing', async () => {
    const cwd = tempDir('smg-none-');
    const gw = await startGatewayProc(['--worker-urls', mocks.urls[0], '--data-dir', 'none'], { cwd });
    await gw.stop();
    expect(readdirSync(cwd)).toEqual([]);
  }, 30_000);
});

describe('the data dir lock', () => {
  type Outcome = 'runs' | 'locked out' | 'port taken' | 'failed';

  /** two `smg launch` spawned at once on `dataDir`: what became of each */
  async function race(dataDir: string): Promise<{ outcomes: Outcome[]; procs: Proc[] }> {
    const start = async () => {
      const args = ['launch', '--host', '127.0.0.1', '--data-dir', dataDir, '--log-level', 'warn'];
      args.push('--port', String(await freePort()), '--prometheus-port', String(await freePort()));
      args.push('--worker-urls', mocks.urls[0], '--shutdown-grace-period-secs', '1');
      return args;
    };
    const [argsA, argsB] = await Promise.all([start(), start()]);
    const procs = [spawnSmg(argsA), spawnSmg(argsB)];
    const ports = [argsA, argsB].map((a) => a[a.indexOf('--port') + 1]);
    const serving = async (i: number) => {
      const res = await fetch(`http://127.0.0.1:${ports[i]}/liveness`, { signal: AbortSignal.timeout(1000) });
      return res.status === 200;
    };
    const lockedOut = `data dir ${dataDir} is in use by another smg process`;
    // each either serves or exits (its last words read): wait until both have decided
    const decide = async (i: number): Promise<Outcome> => {
      const p = procs[i];
      await waitFor(
        async () => p.child.exitCode !== null || (await serving(i).catch(() => false)),
        30_000,
        `process ${i} serving or exited`,
      );
      if (p.child.exitCode === null) return 'runs';
      await exitOf(p);
      await waitFor(async () => /smg: /.test(p.output()), 5_000, `process ${i} exit message`).catch(
        () => undefined,
      );
      if (p.output().includes(lockedOut)) return p.child.exitCode === 1 ? 'locked out' : 'failed';
      // another process on this shared machine took a port between freePort and listen
      return /EADDRINUSE/.test(p.output()) ? 'port taken' : 'failed';
    };
    return { outcomes: await Promise.all([decide(0), decide(1)]), procs };
  }

  it('of two processes started at the same instant on one data dir, exactly one runs', async () => {
    let clashes = 0;
    for (let round = 0; round < 5; round++) {
      const { outcomes, procs } = await race(path.join(tempDir('smg-lock-'), 'shared'));
      try {
        if (outcomes.includes('port taken') && clashes++ < 3) {
          round--; // not what this tests: run the round again
          continue;
        }
        expect(
          [...outcomes].sort(),
          `round ${round}: ${procs.map((p) => p.output().slice(-500)).join('\n')}`,
        ).toEqual(['locked out', 'runs']);
      } finally {
        for (const p of procs) await p.stop();
      }
    }
  }, 240_000);
});
