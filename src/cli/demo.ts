/**
 * `npm run demo` / `smg demo`: an HA mesh of three gateway peers on one machine, in front of mock
 * engines. One child process runs the engines; three more run `smg launch --ha-mesh`, joined through
 * each other's mesh ports with a cluster key made for this run, passed in their environment
 * (SMG_MESH_CLUSTER_KEY), never on a command line that `ps` shows. The engines are registered on the
 * first peer only: the other two learn them through the replicated registry. Prints the commands to
 * try; Ctrl-C (or SIGTERM) stops everything.
 *
 * Everything binds loopback unless `--host H` says otherwise (the peers' HTTP and Prometheus
 * listeners; the mesh and the engines stay on loopback). Ports follow `--port P` (default 30000): peer i (0, 1, 2) serves HTTP on P+10i, the mesh on
 * P+10i+1 and Prometheus on P-1000+10i; the engines listen on P+1001 onwards. State lives in a temp
 * dir removed on exit, or in $SMG_DEMO_DATA_DIR, which is kept so a restarted demo recovers it. The
 * children get the environment without its SMG_* settings, so the demo always runs the same way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateClusterKey } from '../../mesh/swim/keyring.js';

export const DEMO_DEFAULT_PORT = 30000;
export const DEMO_PEERS = 3;
/** peer i's HTTP, mesh and Prometheus ports are the first peer's plus i × this */
export const DEMO_PORT_STEP = 10;
/** engines started; the first DEMO_REGISTERED_ENGINES are registered, the rest are spares */
export const DEMO_ENGINES = 4;
export const DEMO_REGISTERED_ENGINES = 3;
export const DEMO_MODEL = 'mock-model';
/** the demo is for this machine: nothing listens beyond loopback unless `--host` asks */
export const DEMO_DEFAULT_HOST = '127.0.0.1';
const ENGINE_OFFSET = 1001;
const PROMETHEUS_OFFSET = -1000;
const ENGINES_TIMEOUT_MS = 15_000;
const HEALTH_TIMEOUT_MS = 20_000;
const MESH_TIMEOUT_MS = 20_000;
const KILL_AFTER_MS = 10_000;
const TAIL_LINES = 40;

export const DEMO_USAGE = `Usage: smg demo [--port P] [--host H]

Three gateway peers in one HA mesh in front of mock engines, all on this machine.
  --port P   HTTP port of the first peer (default ${DEMO_DEFAULT_PORT}); the others use P+10 and P+20,
             the mesh P+1, P+11, P+21, Prometheus P-1000, P-990, P-980, the engines P+1001...
  --host H   address the peers' HTTP and Prometheus listeners bind (default ${DEMO_DEFAULT_HOST});
             e.g. 0.0.0.0 to reach the demo from other machines (the mesh and engines stay on loopback)
Environment:
  SMG_DEMO_DATA_DIR   keep the peers' state there (instead of a temp dir removed on exit), so a
                      restarted demo recovers it
`;

export class DemoArgsError extends Error {
  override readonly name = 'DemoArgsError';
}

export interface DemoOptions {
  port: number;
  host: string;
  help: boolean;
}

/** The arguments of `smg demo`. Throws DemoArgsError on anything but `--port P` / `--host H` / `--help`. */
export function parseDemoArgs(argv: readonly string[]): DemoOptions {
  let port = DEMO_DEFAULT_PORT;
  let host = DEMO_DEFAULT_HOST;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (arg === '--host' || arg.startsWith('--host=')) {
      const h = arg === '--host' ? argv[++i] : arg.slice('--host='.length);
      if (h === undefined || !(isIP(h) !== 0 || h === 'localhost')) {
        throw new DemoArgsError(
          `--host needs an IP address to bind (or localhost), got ${h === undefined ? 'nothing' : JSON.stringify(h)}`,
        );
      }
      host = h;
      continue;
    }
    let raw: string | undefined;
    if (arg === '--port') raw = argv[++i];
    else if (arg.startsWith('--port=')) raw = arg.slice('--port='.length);
    else
      throw new DemoArgsError(
        `unexpected argument ${JSON.stringify(arg)}; smg demo takes only --port P and --host H`,
      );
    if (raw === undefined || !/^\d{1,5}$/.test(raw)) {
      throw new DemoArgsError(
        `--port needs a port number, got ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`,
      );
    }
    port = Number(raw);
  }
  const min = 1 - PROMETHEUS_OFFSET;
  const max = 65535 - ENGINE_OFFSET - (DEMO_ENGINES - 1);
  if (port < min || port > max) {
    throw new DemoArgsError(
      `--port must be between ${min} and ${max} (the demo also uses P-1000 for metrics and P+${ENGINE_OFFSET}.. for engines), got ${port}`,
    );
  }
  return { port, host, help };
}

/** where a client on this machine reaches a listener bound to `host` */
function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return isIP(host) === 6 ? `[${host}]` : host;
}

/** the engines' URLs for a first-peer port: registered ones first, then the spares */
export function demoEngineUrls(port: number): string[] {
  return Array.from({ length: DEMO_ENGINES }, (_, i) => `http://127.0.0.1:${port + ENGINE_OFFSET + i}`);
}

export interface DemoPeer {
  /** node name, also the name of its data dir */
  name: string;
  url: string;
  port: number;
  meshPort: number;
  prometheusPort: number;
  dataDir: string;
  /** arguments of `smg launch` (no secrets: `ps` shows them) */
  args: string[];
  /** environment for `smg launch`: the cluster key */
  env: Record<string, string>;
}

/** The three peers: their ports, data dirs and `smg launch` arguments. Pure; nothing is started. */
export function planDemoPeers(o: {
  port: number;
  /** bind address of the HTTP and Prometheus listeners (default loopback) */
  host?: string;
  clusterKey: string;
  dataRoot: string;
  workerUrls: readonly string[];
}): DemoPeer[] {
  const at = (i: number) => ({
    port: o.port + i * DEMO_PORT_STEP,
    meshPort: o.port + i * DEMO_PORT_STEP + 1,
    prometheusPort: o.port + PROMETHEUS_OFFSET + i * DEMO_PORT_STEP,
  });
  const seeds = Array.from({ length: DEMO_PEERS }, (_, i) => `127.0.0.1:${at(i).meshPort}`).join(',');
  const host = o.host ?? DEMO_DEFAULT_HOST;
  return Array.from({ length: DEMO_PEERS }, (_, i) => {
    const { port, meshPort, prometheusPort } = at(i);
    const name = `demo-${i + 1}`;
    const dataDir = join(o.dataRoot, name);
    const args = [
      '--ha-mesh',
      '--mesh-host',
      '127.0.0.1',
      '--mesh-port',
      String(meshPort),
      '--mesh-node-name',
      name,
      '--data-dir',
      dataDir,
      '--seeds',
      seeds,
      '--host',
      host,
      '--port',
      String(port),
      '--prometheus-host',
      host,
      '--prometheus-port',
      String(prometheusPort),
      '--policy',
      'cache_aware',
      '--log-level',
      'warn',
      // the default grace (180 s) would hold Ctrl-C for a 5 s settle; the demo has nothing to drain
      '--shutdown-grace-period-secs',
      '4',
    ];
    // the workers are registered on the first peer only; the registry replicates them to the others
    if (i === 0 && o.workerUrls.length > 0) args.push('--worker-urls', ...o.workerUrls);
    const env = { SMG_MESH_CLUSTER_KEY: o.clusterKey };
    return {
      name,
      url: `http://${urlHost(host)}:${port}`,
      port,
      meshPort,
      prometheusPort,
      dataDir,
      args,
      env,
    };
  });
}

/**
 * How many alive members a `GET /mesh/status` body reports, whatever its exact shape: the longest
 * count over lists of members with a `state`/`status` (or `alive: true`), or a numeric `alive…`
 * field. Undefined when the body has neither.
 */
export function countAliveNodes(body: unknown, depth = 0): number | undefined {
  if (depth > 5 || body === null || typeof body !== 'object') return undefined;
  if (Array.isArray(body)) {
    const states = body.map(memberState).filter((s) => s !== undefined);
    if (states.length > 0) return states.filter((s) => s === 'alive').length;
    let best: number | undefined;
    for (const item of body) best = larger(best, countAliveNodes(item, depth + 1));
    return best;
  }
  let best: number | undefined;
  for (const [key, value] of Object.entries(body)) {
    if (typeof value === 'number' && /^alive(_?(nodes|members|count|peers))?$/i.test(key)) {
      best = larger(best, value);
    } else {
      best = larger(best, countAliveNodes(value, depth + 1));
    }
  }
  return best;
}

function memberState(item: unknown): string | undefined {
  if (item === null || typeof item !== 'object') return undefined;
  const rec = item as Record<string, unknown>;
  const s = rec.state ?? rec.status;
  if (typeof s === 'string') return s.toLowerCase();
  if (typeof rec.alive === 'boolean') return rec.alive ? 'alive' : 'not alive';
  return undefined;
}

function larger(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.max(a, b);
}

// ---------------------------------------------------------------------------------------------
// child processes

interface Proc {
  name: string;
  child: ChildProcess;
  /** the last lines of its stdout and stderr */
  tail: string[];
  /** its lines are echoed as they come (so a failure need not repeat them) */
  echo: boolean;
  /** set once it has exited and its output is read */
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  closed: Promise<void>;
}

/** the environment without SMG_* settings (and SMG's CONTROL_PLANE_API_KEYS) */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SMG_') && k !== 'CONTROL_PLANE_API_KEYS') env[k] = v;
  }
  return env;
}

function startProc(
  name: string,
  args: string[],
  onLine?: (line: string) => void,
  env: Record<string, string> = {},
): Proc {
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...childEnv(), ...env },
  });
  const proc: Proc = { name, child, tail: [], echo: false, closed: Promise.resolve() };
  const read = (stream: NodeJS.ReadableStream | null) => {
    let partial = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        proc.tail.push(line.length > 600 ? `${line.slice(0, 600)}…` : line);
        if (proc.tail.length > TAIL_LINES) proc.tail.shift();
        onLine?.(line);
      }
    });
    stream?.on('end', () => {
      if (partial !== '') proc.tail.push(partial);
    });
  };
  read(child.stdout);
  read(child.stderr);
  proc.closed = new Promise<void>((done) => {
    child.once('error', (err) => {
      proc.tail.push(`cannot start: ${err.message}`);
      proc.exit ??= { code: null, signal: null };
      done();
    });
    child.once('close', (code, signal) => {
      proc.exit ??= { code, signal };
      done();
    });
  });
  return proc;
}

function describeExit(proc: Proc): string {
  const e = proc.exit;
  if (!e) return 'is running';
  return e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code ?? 'unknown'}`;
}

function tailText(proc: Proc): string {
  if (proc.echo) return `  (its output is above, prefixed [${proc.name}])\n`;
  if (proc.tail.length === 0) return `  (${proc.name} printed nothing)\n`;
  return `  last output of ${proc.name}:\n${proc.tail.map((l) => `  | ${l}`).join('\n')}\n`;
}

/** SIGTERM, then SIGKILL if it is still running after KILL_AFTER_MS */
async function stopProc(proc: Proc): Promise<void> {
  if (proc.exit) return;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => {
    if (!proc.exit) {
      process.stderr.write(`smg demo: ${proc.name} did not stop in ${KILL_AFTER_MS / 1000} s; killing it\n`);
      proc.child.kill('SIGKILL');
    }
  }, KILL_AFTER_MS);
  await proc.closed;
  clearTimeout(timer);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class StartupError extends Error {
  constructor(
    message: string,
    readonly proc?: Proc,
  ) {
    super(message);
  }
}

async function waitForEngines(proc: Proc, listening: () => number): Promise<void> {
  const deadline = Date.now() + ENGINES_TIMEOUT_MS;
  while (listening() < DEMO_ENGINES) {
    if (proc.exit) throw new StartupError(`the mock engines ${describeExit(proc)} while starting`, proc);
    if (Date.now() > deadline) {
      throw new StartupError(
        `the mock engines did not start within ${ENGINES_TIMEOUT_MS / 1000} s (${listening()} of ${DEMO_ENGINES} listening)`,
        proc,
      );
    }
    await sleep(50);
  }
}

async function waitForHealth(peer: DemoPeer, proc: Proc): Promise<void> {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  let last: string;
  while (true) {
    if (proc.exit) throw new StartupError(`peer ${peer.name} ${describeExit(proc)} while starting`, proc);
    try {
      const res = await fetch(`${peer.url}/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `last answer: HTTP ${res.status}`;
    } catch (err) {
      last = `last error: ${err instanceof Error ? err.message : String(err)}`;
    }
    if (Date.now() > deadline) {
      throw new StartupError(
        `peer ${peer.name} did not answer GET ${peer.url}/health with 200 within ${HEALTH_TIMEOUT_MS / 1000} s (${last})`,
        proc,
      );
    }
    await sleep(200);
  }
}

interface MeshView {
  alive?: number;
  status?: number;
  note: string;
}

async function meshView(peer: DemoPeer): Promise<MeshView> {
  try {
    const res = await fetch(`${peer.url}/mesh/status`, { signal: AbortSignal.timeout(1000) });
    const text = await res.text();
    const shown = text.length > 300 ? `${text.slice(0, 300)}…` : text;
    if (res.status !== 200)
      return { status: res.status, note: `GET /mesh/status answered ${res.status} ${shown}` };
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return { status: res.status, note: `GET /mesh/status answered non-JSON ${shown}` };
    }
    const alive = countAliveNodes(body);
    return {
      status: res.status,
      ...(alive !== undefined && { alive }),
      note: alive === undefined ? `no member list in ${shown}` : `${alive} alive: ${shown}`,
    };
  } catch (err) {
    return { note: `GET /mesh/status failed: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** true once every peer sees all of them alive; false (after a warning) when that does not happen */
async function waitForMesh(peers: DemoPeer[]): Promise<boolean> {
  const deadline = Date.now() + MESH_TIMEOUT_MS;
  let views: MeshView[] = [];
  while (true) {
    views = await Promise.all(peers.map(meshView));
    if (views.every((v) => (v.alive ?? 0) >= DEMO_PEERS)) return true;
    // a route that is not there will not appear later: no use waiting for it
    if (views.every((v) => v.status === 404) || Date.now() > deadline) break;
    await sleep(500);
  }
  process.stderr.write(
    [
      `smg demo: warning: the mesh did not converge on ${DEMO_PEERS} alive peers within ${MESH_TIMEOUT_MS / 1000} s; ` +
        'the peers keep running, each on its own for now. What each one reports:',
      ...peers.map((p, i) => `  ${p.name} (${p.url}): ${views[i].note}`),
      '',
    ].join('\n'),
  );
  return false;
}

// ---------------------------------------------------------------------------------------------

export async function runDemo(argv: string[]): Promise<void> {
  let opts: DemoOptions;
  try {
    opts = parseDemoArgs(argv);
  } catch (err) {
    if (!(err instanceof DemoArgsError)) throw err;
    process.stderr.write(`smg demo: ${err.message}\n`);
    process.exit(2);
  }
  if (opts.help) {
    process.stdout.write(DEMO_USAGE);
    return;
  }
  const entry = fileURLToPath(new URL('./main.js', import.meta.url));
  const keptDir = process.env.SMG_DEMO_DATA_DIR?.trim() || undefined;
  const dataRoot = keptDir !== undefined ? resolve(keptDir) : mkdtempSync(join(tmpdir(), 'smg-demo-'));
  if (keptDir !== undefined) mkdirSync(dataRoot, { recursive: true });

  const engines: Proc[] = [];
  const peerProcs: Proc[] = [];
  let stopping = false;
  /** while the demo polls /mesh/status, the peers' log lines about those requests are its own noise */
  let polling = true;

  const cleanUp = () => {
    if (keptDir === undefined) rmSync(dataRoot, { recursive: true, force: true });
  };
  const shutdown = async (code: number) => {
    if (stopping) return;
    stopping = true;
    // peers first, so they can drain against engines that are still up
    await Promise.all(peerProcs.map(stopProc));
    await Promise.all(engines.map(stopProc));
    cleanUp();
    process.exit(code);
  };
  const fail = (message: string, proc?: Proc) => {
    if (stopping) return;
    process.stderr.write(`smg demo: ${message}\n${proc ? tailText(proc) : ''}`);
    void shutdown(1);
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (!stopping) {
      process.stderr.write(`\nsmg demo: ${signal}: stopping the peers and the engines\n`);
      void shutdown(0);
      return;
    }
    // a second signal: stop waiting
    for (const p of [...peerProcs, ...engines]) if (!p.exit) p.child.kill('SIGKILL');
    cleanUp();
    process.exit(1);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  /** a child that ends while the demo is not stopping takes the demo down */
  const watch = (proc: Proc) => {
    void proc.closed.then(() => fail(`${proc.name} ${describeExit(proc)} unexpectedly`, proc));
  };

  const port = opts.port;
  const engineUrls = demoEngineUrls(port);
  const registered = engineUrls.slice(0, DEMO_REGISTERED_ENGINES);
  const spare = engineUrls[DEMO_REGISTERED_ENGINES];
  let listening = 0;
  const engineProc = startProc(
    'mock engines',
    [
      entry,
      'mock-worker',
      '--port',
      String(port + ENGINE_OFFSET),
      '--count',
      String(DEMO_ENGINES),
      '--model',
      DEMO_MODEL,
      '--ttft-ms',
      '20',
      '--prefill-tokens-per-s',
      '4000',
      '--itl-ms',
      '15',
      '--output-tokens',
      '24',
    ],
    (line) => {
      if (/listening/.test(line)) listening++;
    },
  );
  engines.push(engineProc);

  const peers = planDemoPeers({
    port,
    host: opts.host,
    clusterKey: generateClusterKey(),
    dataRoot,
    workerUrls: registered,
  });
  try {
    await waitForEngines(engineProc, () => listening);
    watch(engineProc);
    for (const peer of peers) {
      const proc = startProc(
        peer.name,
        [entry, 'launch', ...peer.args],
        (line) => {
          if (!proc.echo || stopping || (polling && line.includes('/mesh/status'))) return;
          process.stderr.write(`[${peer.name}] ${line}\n`);
        },
        peer.env,
      );
      peerProcs.push(proc);
    }
    await Promise.all(peers.map((peer, i) => waitForHealth(peer, peerProcs[i])));
  } catch (err) {
    if (err instanceof StartupError) fail(err.message, err.proc);
    else fail(err instanceof Error ? (err.stack ?? err.message) : String(err));
    return;
  }
  if (stopping) return;
  // from here on the peers' own warnings are shown as they come; start-up chatter stayed in the tails
  for (const proc of peerProcs) {
    proc.echo = true;
    watch(proc);
  }

  const converged = await waitForMesh(peers);
  polling = false;
  if (stopping) return;

  const [p1, p2, p3] = peers;
  const pid2 = peerProcs[1].child.pid;
  const line = (p: DemoPeer, i: number) =>
    `  ${p.name}  ${p.url}  mesh 127.0.0.1:${p.meshPort}  metrics http://${urlHost(opts.host)}:${p.prometheusPort}/metrics  pid ${peerProcs[i].child.pid}`;
  const chat = (base: string, content: string, stream = false) => [
    `  curl -s${stream ? 'N' : ''} ${base}/v1/chat/completions -H 'content-type: application/json' \\`,
    `    -d '{"model":"${DEMO_MODEL}",${stream ? '"stream":true,' : ''}"messages":[{"role":"user","content":"${content}"}]}'`,
  ];
  process.stdout.write(
    [
      '',
      `smg demo: ${DEMO_PEERS} gateway peers in one HA mesh (policy cache_aware)${converged ? ', all alive' : ''}`,
      ...peers.map(line),
      `engines: ${registered.join(', ')} (registered on ${p1.name}), spare ${spare}`,
      keptDir !== undefined
        ? `state: ${dataRoot} (kept; run the demo again with the same SMG_DEMO_DATA_DIR to see the peers recover it)`
        : `state: ${dataRoot} (removed on exit; set SMG_DEMO_DATA_DIR to keep it)`,
      '',
      'Try:',
      `  # the engines were registered on ${p1.name}; ${p2.name} knows them through the replicated registry`,
      `  curl -s ${p2.url}/v1/models`,
      `  # any peer routes`,
      ...chat(p3.url, 'Hello from the demo'),
      ...chat(p1.url, 'Stream please', true),
      `  # the members of the mesh, and the registry as the mesh holds it`,
      `  curl -s ${p1.url}/mesh/status`,
      `  curl -s ${p1.url}/mesh/workers`,
      `  # register the spare engine on ${p3.name}, then list the workers on ${p1.name}`,
      `  curl -s ${p3.url}/workers -H 'content-type: application/json' -d '{"url":"${spare}"}'`,
      `  curl -s ${p1.url}/workers`,
      `  # freeze ${p2.name}, watch the others notice, then let it go on`,
      `  kill -STOP ${pid2}; sleep 10; curl -s ${p1.url}/mesh/status; kill -CONT ${pid2}`,
      '',
      'Ctrl-C stops the peers and the engines.',
      '',
    ].join('\n'),
  );
}
