/**
 * Memory bounded before admission, and the listening server's own timeouts, seen from client
 * sockets against real `smg launch` and `smg mock-worker` processes: admission decides on the
 * headers, a queued request's body stays unread, slow bodies are cut off with 408, the bytes of
 * all bodies held at once have a cap (503 + Retry-After), and keep-alive, headers and body
 * timeouts apply to the server that listens.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  startGatewayProc,
  startMockFleet,
  stopAll,
  waitFor,
  type GatewayProc,
  type MockFleetProc,
} from '../testing/processes.js';
import { largeChatBody, slowUpload } from '../testing/slow-upload.js';

let mocks: MockFleetProc;

beforeAll(async () => {
  mocks = await startMockFleet(2, ['--model', 'mock-model', '--output-tokens', '2']);
}, 60_000);

afterAll(async () => {
  await stopAll();
});

function gateway(extra: string[]): Promise<GatewayProc> {
  return startGatewayProc(['--worker-urls', ...mocks.urls, '--policy', 'round_robin', ...extra]);
}

/** a raw client socket: what it received so far, and whether the server closed it */
interface RawClient {
  socket: net.Socket;
  received(): string;
  closed(): boolean;
}

async function connect(url: string): Promise<RawClient> {
  const u = new URL(url);
  const socket = net.connect(Number(u.port), u.hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let data = '';
  let closed = false;
  socket.on('data', (b: Buffer) => (data += b.toString('latin1')));
  socket.on('error', () => undefined);
  socket.on('close', () => (closed = true));
  return { socket, received: () => data, closed: () => closed };
}

const chatBody = (content = 'hello') =>
  JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content }], max_tokens: 2 });

function chatHead(url: string, length: number, extra = ''): string {
  const u = new URL(url);
  return (
    `POST /v1/chat/completions HTTP/1.1\r\nHost: ${u.host}\r\ncontent-type: application/json\r\n` +
    `content-length: ${length}\r\n${extra}\r\n`
  );
}

/** the status of every complete HTTP response head in `text`, in order */
function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

async function metric(gw: GatewayProc, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${gw.metricsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

describe('server timeouts on the listening server (client sockets)', () => {
  it('keep-alive outlives Node’s 5 s default with the defaults, and --keep-alive-timeout-secs closes idle connections', async () => {
    const gw = await gateway([]);
    const c = await connect(gw.url);
    const u = new URL(gw.url);
    c.socket.write(`GET /health HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`);
    await waitFor(async () => statuses(c.received()).length === 1, 10_000, 'first answer');
    // idle for longer than Node's own 5 s default: the 75 s default keeps the connection open
    const idleUntil = Date.now() + 6_000;
    await waitFor(async () => c.closed() || Date.now() >= idleUntil, 20_000, 'six idle seconds');
    expect(c.closed()).toBe(false);
    c.socket.write(`GET /health HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`);
    await waitFor(
      async () => statuses(c.received()).length === 2,
      10_000,
      'second answer on the same socket',
    );
    c.socket.destroy();
    await gw.stop();

    const short = await gateway(['--keep-alive-timeout-secs', '1']);
    const d = await connect(short.url);
    const su = new URL(short.url);
    d.socket.write(`GET /health HTTP/1.1\r\nHost: ${su.host}\r\n\r\n`);
    await waitFor(async () => statuses(d.received()).length === 1, 10_000, 'answer');
    await waitFor(async () => d.closed(), 15_000, 'the server closes the idle connection');
    await short.stop();
  }, 60_000);

  it('--headers-timeout-secs answers 408 to headers that never finish, and closes', async () => {
    const gw = await gateway(['--headers-timeout-secs', '1']);
    const c = await connect(gw.url);
    c.socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: appl`);
    await waitFor(async () => c.closed(), 15_000, 'the server closes the connection');
    expect(statuses(c.received())).toEqual([408]);
    await gw.stop();
  }, 30_000);

  it('--body-read-timeout-secs answers 408 body_read_timeout to a trickled body, on the fast path and on admin routes', async () => {
    const gw = await gateway(['--body-read-timeout-secs', '1']);
    const c = await connect(gw.url);
    c.socket.write(chatHead(gw.url, 1000) + '{"model":');
    await waitFor(async () => c.closed(), 15_000, 'the server cuts the slow body off');
    expect(statuses(c.received())).toEqual([408]);
    expect(c.received()).toContain('x-smg-error-code: body_read_timeout');

    const a = await connect(gw.url);
    const u = new URL(gw.url);
    a.socket.write(
      `POST /workers HTTP/1.1\r\nHost: ${u.host}\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"url":`,
    );
    await waitFor(async () => a.closed(), 15_000, 'the admin route cuts the slow body off');
    expect(statuses(a.received())).toEqual([408]);
    expect(a.received()).toContain('body_read_timeout');
    // the process keeps serving
    const ok = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody(),
    });
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();
    await gw.stop();
  }, 30_000);
});

describe('bodies are read only after admission, under one byte budget', () => {
  it('--max-buffered-request-bytes: 503 + Retry-After past the cap, 413 for a body that can never fit, room again when a body ends', async () => {
    const gw = await gateway(['--max-buffered-request-bytes', '200000']);
    // holds 150 kB of the budget while its body trickles in
    const body = chatBody('x'.repeat(150_000 - chatBody('').length));
    expect(body.length).toBe(150_000);
    const held = await connect(gw.url);
    held.socket.write(chatHead(gw.url, body.length) + body.slice(0, 10));
    await waitFor(
      async () => {
        const res = await fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: chatBody('y'.repeat(80_000)),
        });
        await res.arrayBuffer();
        if (res.status === 200) return false; // the held body has not been taken in yet
        expect(res.status).toBe(503);
        expect(res.headers.get('x-smg-error-code')).toBe('request_buffer_full');
        expect(res.headers.get('retry-after')).toBe('1');
        return true;
      },
      10_000,
      'a second body over the cap is refused',
    );
    const huge = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody('z'.repeat(250_000)),
    });
    expect(huge.status).toBe(413);
    await huge.arrayBuffer();
    // refused while still sending: the client reads the answer, never a reset (lingering close)
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const key = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: chatBody('z'.repeat(1_000_000)),
      }).then(
        async (r) => (await r.arrayBuffer(), String(r.status)),
        (err: Error & { cause?: { code?: string } }) => err.cause?.code ?? err.message,
      );
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
    expect(Object.fromEntries(outcomes)).toEqual({ '413': 40 });
    held.socket.write(body.slice(10));
    await waitFor(async () => statuses(held.received()).includes(200), 10_000, 'the held request is served');
    held.socket.destroy();
    const after = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody('y'.repeat(80_000)),
    });
    expect(after.status).toBe(200);
    await after.arrayBuffer();
    await gw.stop();
  }, 30_000);

  it('a queued request gets 100 Continue only once admitted; a full queue answers 429 before any body byte', async () => {
    const gw = await gateway(['--max-concurrent-requests', '1', '--queue-size', '1']);
    const body = chatBody();
    // takes the only slot and keeps it while its body is unfinished
    const first = await connect(gw.url);
    first.socket.write(chatHead(gw.url, body.length) + body.slice(0, 5));
    await waitFor(
      async () => (await metric(gw, 'smg_http_rate_limit_total', 'result="allowed"')) === 1,
      10_000,
      'first admitted',
    );
    const queued = await connect(gw.url);
    queued.socket.write(chatHead(gw.url, body.length, 'expect: 100-continue\r\n'));
    const refused = await connect(gw.url);
    refused.socket.write(chatHead(gw.url, body.length, 'expect: 100-continue\r\n'));
    await waitFor(async () => refused.closed(), 10_000, 'the third request is refused and closed');
    expect(statuses(refused.received())).toEqual([429]);
    expect(queued.received()).toBe(''); // no 100 Continue while it waits
    first.socket.write(body.slice(5));
    await waitFor(async () => statuses(first.received()).includes(200), 10_000, 'first served');
    await waitFor(
      async () => statuses(queued.received()).includes(100),
      10_000,
      '100 Continue once admitted',
    );
    queued.socket.write(body);
    await waitFor(async () => statuses(queued.received()).includes(200), 10_000, 'queued served');
    for (const c of [first, queued]) c.socket.destroy();
    await gw.stop();
  }, 30_000);

  it('200 concurrent slow uploads of 8 MiB against --max-concurrent-requests 8: RSS stays under 300 MB and every admitted request succeeds', async () => {
    // the default policy (cache_aware), which reads the most of each body
    const gw = await startGatewayProc([
      '--worker-urls',
      ...mocks.urls,
      '--max-concurrent-requests',
      '8',
      '--queue-timeout-secs',
      '600',
    ]);
    const body = largeChatBody(8 * 1024 * 1024);
    const pid = gw.child.pid as number;
    let peakRss = rssBytes(pid);
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssBytes(pid))), 50);
    // each upload sends 256 KiB, then waits 15 ms (~16 MiB/s), honouring backpressure; a refused
    // upload reads its 429 (lingering close), never a reset
    const upload = () => slowUpload(gw.url, body, 256 * 1024, 15);

    const results = await Promise.all(Array.from({ length: 200 }, upload));
    clearInterval(sampler);
    peakRss = Math.max(peakRss, rssBytes(pid));
    const ok = results.filter((r) => r === 200).length;
    const refused = results.filter((r) => r === 429).length;
    const allowed = await metric(gw, 'smg_http_rate_limit_total', 'result="allowed"');
    const rejected = await metric(gw, 'smg_http_rate_limit_total', 'result="rejected"');
    // every request the gateway admitted was served; every other one was refused at admission
    expect(ok).toBe(allowed);
    expect(ok + refused).toBe(200);
    expect(allowed + rejected).toBe(200);
    // the 8 slots and the 100 places of the queue (default --queue-size) were all used
    expect(ok).toBeGreaterThanOrEqual(108);
    expect(peakRss).toBeLessThan(300 * 1024 * 1024);
    console.log(`200 slow 8 MiB uploads, cache_aware: peak RSS ${(peakRss / 1048576).toFixed(1)} MiB`);
    await gw.stop();
  }, 240_000);
});
