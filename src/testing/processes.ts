/**
 * Real-process helpers for end-to-end tests and benchmarks: start `smg` (built, from dist/) as a
 * child process, wait until it answers, stop it by PID. Every process started here is tracked and
 * killed on `stopAll()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/src/cli/main.js whether this file runs from src/ (vitest) or from dist/ */
export const SMG_ENTRY = here.includes(`${path.sep}dist${path.sep}`)
  ? path.resolve(here, '../cli/main.js')
  : path.resolve(here, '../../dist/src/cli/main.js');

export interface Proc {
  readonly child: ChildProcess;
  readonly output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const running = new Set<Proc>();

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export function spawnSmg(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn(process.execPath, [SMG_ENTRY, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  return trackProcess(child, running);
}

/**
 * A Proc for a spawned child: keeps the tail of its output, and `stop` (SIGCONT first if it was
 * stopped, then `signal`, SIGKILL after 5 s) removes it from `registry`, which holds it meanwhile.
 */
export function trackProcess(child: ChildProcess, registry: Set<Proc>): Proc {
  let out = '';
  const keep = (b: Buffer) => {
    out += b.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const proc: Proc = {
    child,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      registry.delete(proc);
      if (child.signalCode === 'SIGSTOP') child.kill('SIGCONT');
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        const code = await exited;
        clearTimeout(t);
        return code;
      }
      return child.exitCode;
    },
  };
  registry.add(proc);
  return proc;
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
}

export async function waitFor(
  check: () => Promise<boolean>,
  timeoutMs: number,
  what: string,
  proc?: Proc,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    if (proc && proc.child.exitCode !== null) {
      throw new Error(`${what}: process exited with ${proc.child.exitCode}\n${proc.output()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what}: not ready after ${timeoutMs} ms${proc ? `\n${proc.output()}` : ''}`);
}

async function answers(url: string, okStatuses: number[] = [200]): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
  await res.arrayBuffer();
  return okStatuses.includes(res.status);
}

export interface MockFleetProc extends Proc {
  urls: string[];
}

export async function startMockFleet(count: number, extra: string[] = []): Promise<MockFleetProc> {
  const ports: number[] = [];
  // consecutive free ports: the mock takes --port P --count N
  for (let attempt = 0; attempt < 20 && ports.length === 0; attempt++) {
    const base = await freePort();
    const candidates = Array.from({ length: count }, (_, i) => base + i);
    const free = await Promise.all(candidates.map((p) => portIsFree(p)));
    if (free.every(Boolean)) ports.push(...candidates);
  }
  if (ports.length === 0) throw new Error('no run of free ports found');
  const proc = spawnSmg(['mock-worker', '--port', String(ports[0]), '--count', String(count), ...extra]);
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  await Promise.all(urls.map((u) => waitFor(() => answers(`${u}/health`), 15_000, `mock ${u}`, proc)));
  return Object.assign(proc, { urls });
}

/**
 * A mock fleet on ephemeral ports (`--port 0`): no run of consecutive free ports is needed, so it
 * suits large fleets (the scale benchmark's 2,000 workers). Resolves once every worker printed its
 * listening line, with the URLs in that order.
 */
export async function startEphemeralMockFleet(
  count: number,
  extra: string[] = [],
  timeoutMs = 60_000,
): Promise<MockFleetProc> {
  const proc = spawnSmg(['mock-worker', '--port', '0', '--count', String(count), ...extra]);
  const urls: string[] = [];
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => done(new Error(`mock fleet: ${urls.length}/${count} listening`)),
      timeoutMs,
    );
    const onData = (b: Buffer) => {
      buf += b.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const m = /listening on (\S+)/.exec(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (m) urls.push(m[1]);
      }
      if (urls.length >= count) done();
    };
    const onExit = (code: number | null) =>
      done(new Error(`mock fleet exited with ${code}\n${proc.output()}`));
    const done = (err?: Error) => {
      clearTimeout(timer);
      proc.child.stdout?.off('data', onData);
      proc.child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    proc.child.stdout?.on('data', onData);
    proc.child.once('exit', onExit);
  }).catch(async (err: unknown) => {
    await proc.stop();
    throw err;
  });
  return Object.assign(proc, { urls });
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export interface GatewayProc extends Proc {
  url: string;
  metricsUrl: string;
}

/** starts `smg launch` on free ports; waits until /readiness is 200 unless `waitReady` is false */
export async function startGatewayProc(
  args: string[],
  opts: { waitReady?: boolean; readyTimeoutMs?: number } = {},
): Promise<GatewayProc> {
  const port = await freePort();
  const promPort = await freePort();
  const defaults: [string, string][] = [
    ['--host', '127.0.0.1'],
    ['--port', String(port)],
    ['--prometheus-host', '127.0.0.1'],
    ['--prometheus-port', String(promPort)],
    ['--log-level', 'warn'],
    // SIGTERM drains for min(grace/2, 5 s) before closing: keep test and benchmark stops quick
    ['--shutdown-grace-period-secs', '2'],
  ];
  const given = new Set(args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]));
  const proc = spawnSmg(['launch', ...defaults.filter(([f]) => !given.has(f)).flat(), ...args]);
  // flags given by the caller win over the defaults above
  const flag = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
  };
  const host = flag('--host') ?? '127.0.0.1';
  const urlHost = host === '0.0.0.0' ? '127.0.0.1' : host;
  const url = `http://${urlHost}:${flag('--port') ?? port}`;
  if (opts.waitReady === false)
    await waitFor(() => answers(`${url}/liveness`), opts.readyTimeoutMs ?? 15_000, 'gateway liveness', proc);
  else
    await waitFor(
      () => answers(`${url}/readiness`),
      opts.readyTimeoutMs ?? 20_000,
      'gateway readiness',
      proc,
    );
  const promHost = flag('--prometheus-host') ?? '127.0.0.1';
  return Object.assign(proc, {
    url,
    metricsUrl: `http://${promHost === '0.0.0.0' ? '127.0.0.1' : promHost}:${flag('--prometheus-port') ?? promPort}`,
  });
}
