/**
 * Real-process helpers for end-to-end tests and benchmarks: start `smg` (built, from dist/) as a
 * child process, wait until it answers, stop it by PID. Every process started here is tracked and
 * killed on `stopAll()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
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

/**
 * Ports for test processes come from a slice of 10000–32767 of this process's own (by vitest pool
 * or PID), never from the kernel's ephemeral range (32768–60999 here): a port taken with listen(0)
 * and closed again can be handed by the kernel to the next outgoing connection (a gateway dialling
 * its engines) before the process it was meant for binds it. Within the slice a port is handed
 * out once per run, and only after a TCP listen and a UDP bind on it succeeded (the mesh port is
 * both).
 */
const PORT_LOW = 10_000;
const PORT_HIGH = 32_767;
const SLICE = 1_500;
const slices = Math.floor((PORT_HIGH - PORT_LOW + 1) / SLICE);
const poolId = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? process.pid);
const sliceStart = PORT_LOW + ((Number.isFinite(poolId) ? poolId : process.pid) % slices) * SLICE;
let nextInSlice = 0;
const handedOut = new Set<number>();

function tcpFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

function udpFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    sock.once('error', () => {
      sock.close();
      resolve(false);
    });
    sock.bind(port, host, () => sock.close(() => resolve(true)));
  });
}

async function portFree(port: number, host: string): Promise<boolean> {
  return (await tcpFree(port, host)) && (await udpFree(port, host));
}

/** `count` consecutive ports, each free for TCP and UDP on `host`, not handed out before in this run */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  for (let attempt = 0; attempt < SLICE; attempt++) {
    if (nextInSlice + count > SLICE) nextInSlice = 0;
    const first = sliceStart + nextInSlice;
    nextInSlice += count;
    const run = Array.from({ length: count }, (_, i) => first + i);
    if (run.some((p) => handedOut.has(p))) continue;
    const free = await Promise.all(run.map((p) => portFree(p, host)));
    if (!free.every(Boolean)) continue;
    for (const p of run) handedOut.add(p);
    return run;
  }
  throw new Error(`no run of ${count} free ports left in ${sliceStart}–${sliceStart + SLICE - 1}`);
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return (await freePorts(1, host))[0];
}

export function spawnSmg(args: string[], env: NodeJS.ProcessEnv = {}, opts: { cwd?: string } = {}): Proc {
  const child = spawn(process.execPath, [SMG_ENTRY, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
    ...(opts.cwd !== undefined && { cwd: opts.cwd }),
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
  // consecutive ports: the mock takes --port P --count N
  const ports = await freePorts(count);
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

export interface GatewayProc extends Proc {
  url: string;
  metricsUrl: string;
}

/**
 * Starts `smg launch` on free ports; waits until /readiness is 200 unless `waitReady` is false.
 * Keeps no state (`--data-dir none`) unless the caller gives `--data-dir` or a working directory
 * (`cwd`), where the default data dir `./.smg/<node-name>` then goes.
 */
export async function startGatewayProc(
  args: string[],
  opts: { waitReady?: boolean; readyTimeoutMs?: number; cwd?: string } = {},
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
    // no state kept unless the caller asks for it: the default, ./.smg/<host>-<port> in the working
    // directory, would leave a store per test run in the repository
    ...(opts.cwd === undefined ? [['--data-dir', 'none'] as [string, string]] : []),
  ];
  const given = new Set(args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]));
  const proc = spawnSmg(['launch', ...defaults.filter(([f]) => !given.has(f)).flat(), ...args], {}, opts);
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
