import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { readBody, RequestBytesBudget, type BodyFailure, type RequestBody } from './body-reader.js';

interface Outcome {
  failure: BodyFailure | undefined;
  body: RequestBody | undefined;
}

const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    const closed = new Promise((r) => s.close(r));
    s.closeAllConnections();
    await closed;
  }
});

/** a server whose every request body is read by readBody; resolves with the outcome of each */
async function server(limit: number, timeoutMs: number, budget: RequestBytesBudget) {
  const outcomes: Outcome[] = [];
  const waiters: ((o: Outcome) => void)[] = [];
  const srv = http.createServer((req, res) => {
    const read = readBody(req, { limit, timeoutMs, budget }, (failure, body) => {
      const o = { failure, body };
      outcomes.push(o);
      waiters.shift()?.(o);
      res.end(failure ?? 'ok');
      res.once('close', read.release);
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  const next = () => new Promise<Outcome>((r) => waiters.push(r));
  return { port, outcomes, next };
}

function send(port: number, head: string, body: string | Buffer = ''): net.Socket {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  s.write(head);
  if (body.length) s.write(body);
  return s;
}

describe('readBody', () => {
  it('returns the bytes in chunks, decodes UTF-8 across chunk boundaries, and gives the budget back at the end', async () => {
    const budget = new RequestBytesBudget(1 << 20);
    const { port, next } = await server(1 << 20, 5000, budget);
    const text = 'é'.repeat(100_000); // 200 kB of two-byte characters: several chunks
    const bytes = Buffer.from(text);
    const s = send(port, `POST / HTTP/1.1\r\nHost: x\r\ncontent-length: ${bytes.length}\r\n\r\n`);
    // split inside a character on purpose
    s.write(bytes.subarray(0, 1001));
    setImmediate(() => s.write(bytes.subarray(1001)));
    const o = await next();
    expect(o.failure).toBeUndefined();
    expect(o.body?.length).toBe(bytes.length);
    expect(o.body?.text()).toBe(text);
    expect(o.body?.bytes().equals(bytes)).toBe(true);
    s.destroy();
  });

  it('refuses a declared length over the limit or over the budget before reading, and a trickle after the timeout', async () => {
    const budget = new RequestBytesBudget(1000);
    const { port, next } = await server(2000, 200, budget);
    send(port, `POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3000\r\n\r\n`);
    expect((await next()).failure).toBe('too_large');
    send(port, `POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 1500\r\n\r\n`);
    expect((await next()).failure).toBe('over_budget');
    const slow = send(port, `POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 10\r\n\r\n`, 'abc');
    expect((await next()).failure).toBe('timeout');
    expect(budget.used).toBe(0);
    slow.destroy();
  });

  it('a chunked body takes its bytes from the budget as they come, and stops past the cap', async () => {
    const budget = new RequestBytesBudget(100);
    const { port, next } = await server(10_000, 5000, budget);
    const s = send(port, `POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n`);
    s.write(`32\r\n${'a'.repeat(50)}\r\n`);
    s.write(`3c\r\n${'b'.repeat(60)}\r\n0\r\n\r\n`);
    expect((await next()).failure).toBe('over_budget');
    expect(budget.used).toBe(0);
    s.destroy();
  });

  it('a client that goes away mid-body is reported as aborted and holds nothing', async () => {
    const budget = new RequestBytesBudget(10_000);
    const { port, next } = await server(10_000, 5000, budget);
    const s = send(port, `POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 500\r\n\r\n`, 'x'.repeat(10));
    const outcome = next();
    setTimeout(() => s.destroy(), 20);
    expect((await outcome).failure).toBe('aborted');
    expect(budget.used).toBe(0);
  });
});
