/**
 * The deployment files (Dockerfile, .dockerignore, docker-compose.yml) and the demo's peer plan,
 * checked without Docker and without the network: the compose commands are parsed by the same
 * parsers the containers run, the Dockerfile's COPY sources must exist and cover every module the
 * build compiles, and the runtime image must hold every package the gateway imports.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, posix, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';

import { CLUSTER_KEY_BYTES, generateClusterKey, parseClusterKey } from '../../mesh/swim/keyring.js';
import { parseMockWorkerArgs } from '../mock/options.js';
import { LAUNCH_DEFAULTS, parseLaunchArgs } from './config.js';
import {
  DEMO_ENGINES,
  DEMO_PEERS,
  DEMO_REGISTERED_ENGINES,
  DemoArgsError,
  countAliveNodes,
  demoEngineUrls,
  parseDemoArgs,
  planDemoPeers,
} from './demo.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const read = (file: string) => readFileSync(join(ROOT, file), 'utf8');
const PKG = JSON.parse(read('package.json')) as {
  bin: Record<string, string>;
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
};
/** a fixed, valid cluster key: the tests stay deterministic */
const TEST_KEY = Buffer.alloc(CLUSTER_KEY_BYTES, 7).toString('base64');

// ---------------------------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  op: string;
  args: string;
  /** index of the FROM stage it belongs to */
  stage: number;
}

/** instructions of a Dockerfile: comments dropped, `\` continuations joined */
function dockerInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.startsWith('#')) continue; // a comment inside a continued instruction
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    const m = /^(\S+)\s*(.*)$/.exec(full);
    if (!m) continue;
    const op = m[1].toUpperCase();
    if (op === 'FROM') stage++;
    out.push({ op, args: m[2], stage });
  }
  return out;
}

/** the sources and destination of a COPY (JSON or shell form), without its --flags */
function copyParts(args: string): { flags: string[]; sources: string[]; dest: string } {
  const words = args.split(/\s+/).filter((w) => w !== '');
  const flags = words.filter((w) => w.startsWith('--'));
  const rest = words.filter((w) => !w.startsWith('--')).join(' ');
  const paths = rest.startsWith('[') ? (JSON.parse(rest) as string[]) : rest.split(' ');
  return { flags, sources: paths.slice(0, -1), dest: paths[paths.length - 1] };
}

/** `ENV A=1 B=2` (and the legacy `ENV A 1`) of one stage */
function dockerEnv(instrs: Instruction[], stage: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of instrs) {
    if (i.op !== 'ENV' || i.stage !== stage) continue;
    if (!i.args.includes('=')) {
      const [k, ...v] = i.args.split(/\s+/);
      env[k] = v.join(' ');
      continue;
    }
    for (const m of i.args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("([^"]*)"|\S*)/g)) env[m[1]] = m[3] ?? m[2];
  }
  return env;
}

const DOCKERFILE = dockerInstructions(read('Dockerfile'));
const LAST_STAGE = Math.max(...DOCKERFILE.map((i) => i.stage));
const IMAGE_ENV = dockerEnv(DOCKERFILE, LAST_STAGE);
const last = (op: string) => DOCKERFILE.filter((i) => i.op === op && i.stage === LAST_STAGE).at(-1);

/** .dockerignore patterns, negations and comments dropped */
function dockerIgnored(): string[] {
  return read('.dockerignore')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('!'));
}

/** whether a .dockerignore pattern (a path, `*`, `**`) excludes a repository path */
function ignores(pattern: string, path: string): boolean {
  const p = pattern.replace(/^\/+|\/+$/g, '');
  const re = new RegExp(
    `^${p
      .split('/')
      .map((seg) =>
        seg === '**'
          ? '.*'
          : seg
              .replace(/[.+^${}()|[\]\\]/g, '\\$&')
              .replace(/\*/g, '[^/]*')
              .replace(/\?/g, '[^/]'),
      )
      .join('/')
      .replace(/\.\*\//g, '(?:.*/)?')}(?:/.*)?$`,
  );
  return re.test(path);
}

function walk(dir: string, out: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) walk(full, out);
    else out.push(full);
  }
  return out;
}

/** module specifiers of a TypeScript file, and whether each is a type-only import */
function importsOf(source: string): { spec: string; typeOnly: boolean }[] {
  const out: { spec: string; typeOnly: boolean }[] = [];
  for (const m of source.matchAll(/(?:^|\n)\s*(import|export)\s+(type\s+)?(?:[^;'"]*?\sfrom\s+)?'([^']+)'/g))
    out.push({ spec: m[3], typeOnly: m[2] !== undefined });
  for (const m of source.matchAll(/\bimport\(\s*'([^']+)'\s*\)/g)) out.push({ spec: m[1], typeOnly: false });
  return out;
}

describe('Dockerfile', () => {
  const froms = DOCKERFILE.filter((i) => i.op === 'FROM');
  const build = (op: string) => DOCKERFILE.filter((i) => i.op === op && i.stage === 0);

  it('has a build stage and a runtime stage, both on node:22-slim', () => {
    expect(froms).toHaveLength(2);
    expect(froms[0].args).toMatch(/^node:22-slim\s+AS\s+build$/i);
    expect(froms[1].args).toBe('node:22-slim');
  });

  it('builds with the compiler tool chain better-sqlite3 needs, then drops the dev dependencies', () => {
    const runs = build('RUN')
      .map((i) => i.args)
      .join('\n');
    for (const tool of ['python3', 'make', 'g++']) expect(runs).toContain(` ${tool}`);
    const order = ['npm ci', 'npm run build', 'npm prune --omit=dev'].map((s) => runs.indexOf(s));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(PKG.scripts.build).toContain('tsc -p tsconfig.json');
  });

  it('copies only files that exist and that .dockerignore lets through', () => {
    const ignored = dockerIgnored();
    const sources = DOCKERFILE.filter((i) => i.op === 'COPY' || i.op === 'ADD')
      .map((i) => copyParts(i.args))
      .filter((c) => !c.flags.some((f) => f.startsWith('--from')))
      .flatMap((c) => c.sources);
    expect(sources).toEqual(
      expect.arrayContaining(['package.json', 'package-lock.json', 'tsconfig.json', 'src', 'mesh', 'store']),
    );
    for (const src of sources) {
      expect(existsSync(join(ROOT, src)), `COPY ${src}`).toBe(true);
      for (const pattern of ignored)
        expect(ignores(pattern, src), `${src} vs .dockerignore ${pattern}`).toBe(false);
    }
    // the pattern matcher itself
    expect(ignores('**/*.test.ts', 'src/cli/deploy.test.ts')).toBe(true);
    expect(ignores('**/*.test.ts', 'src/cli/demo.ts')).toBe(false);
    expect(ignores('bench', 'bench/run.ts')).toBe(true);
  });

  it('copies every module the build compiles, and the runtime image has every package they load', () => {
    const copied = DOCKERFILE.filter((i) => i.op === 'COPY' && i.stage === 0)
      .map((i) => copyParts(i.args))
      .flatMap((c) => c.sources)
      .filter((s) => statSync(join(ROOT, s)).isDirectory());
    const ignored = dockerIgnored();
    const inContext = (rel: string) => !ignored.some((p) => ignores(p, rel));
    const files = copied
      .flatMap((d) => walk(join(ROOT, d)))
      .map((f) => relative(ROOT, f).split(sep).join('/'))
      .filter((f) => f.endsWith('.ts') && inContext(f));
    expect(files.length).toBeGreaterThan(20);
    const problems: string[] = [];
    for (const file of files) {
      for (const { spec, typeOnly } of importsOf(read(file))) {
        if (spec.startsWith('.')) {
          const target = posix.normalize(posix.join(posix.dirname(file), spec)).replace(/\.js$/, '.ts');
          const top = target.split('/')[0];
          if (!copied.includes(top) || !inContext(target) || !existsSync(join(ROOT, target)))
            problems.push(`${file} imports ${spec}, which the image build does not get`);
        } else if (!spec.startsWith('node:') && !typeOnly) {
          const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
          if (!Object.hasOwn(PKG.dependencies, name))
            problems.push(`${file} loads ${name}, which is not a production dependency (npm prune drops it)`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('runs dist/src/cli/main.js (the package bin) as the unprivileged node user', () => {
    expect(JSON.parse(last('ENTRYPOINT')?.args ?? 'null')).toEqual(['node', 'dist/src/cli/main.js']);
    expect(PKG.bin.smg).toBe('dist/src/cli/main.js');
    const tsconfig = JSON.parse(read('tsconfig.json')) as {
      compilerOptions: { outDir: string; rootDir: string };
    };
    expect(tsconfig.compilerOptions).toMatchObject({ outDir: 'dist', rootDir: '.' });
    expect(existsSync(join(ROOT, 'src/cli/main.ts'))).toBe(true);
    const user = last('USER')?.args;
    expect(user).toBeDefined();
    expect(['root', '0', '']).not.toContain(user);
    const cmd = JSON.parse(last('CMD')?.args ?? '[]') as string[];
    expect(['launch', 'mock-worker', 'demo', '--help']).toContain(cmd[0]);
    const runtimeCopies = DOCKERFILE.filter((i) => i.op === 'COPY' && i.stage === LAST_STAGE).map((i) =>
      copyParts(i.args),
    );
    for (const c of runtimeCopies) expect(c.flags).toContain('--from=build');
    expect(runtimeCopies.flatMap((c) => c.sources).sort()).toEqual([
      '/app/dist',
      '/app/node_modules',
      '/app/package.json',
    ]);
  });

  it('keeps state in a /data volume the node user owns', () => {
    expect(JSON.parse(last('VOLUME')?.args ?? '[]')).toEqual(['/data']);
    const runs = DOCKERFILE.filter((i) => i.op === 'RUN' && i.stage === LAST_STAGE).map((i) => i.args);
    expect(runs.some((r) => r.includes(`chown ${last('USER')?.args}`) && r.includes('/data'))).toBe(true);
    // the image's environment alone is a valid (single-node) configuration, and a mesh node keeps
    // its state in /data rather than under the root-owned working directory
    expect(() => parseLaunchArgs([], IMAGE_ENV)).not.toThrow();
    expect(parseLaunchArgs(['--ha-mesh'], IMAGE_ENV).mesh.dataDir).toBe('/data');
  });

  it('exposes the default ports and probes /health with node', () => {
    const exposed = (last('EXPOSE')?.args ?? '').split(/\s+/);
    const d = LAUNCH_DEFAULTS;
    expect(exposed).toEqual(
      expect.arrayContaining([
        String(d.port),
        String(d['prometheus-port']),
        `${d['mesh-port']}/tcp`,
        `${d['mesh-port']}/udp`,
      ]),
    );
    const hc = last('HEALTHCHECK')?.args ?? '';
    const cmd = JSON.parse(hc.slice(hc.indexOf('CMD') + 3).trim()) as string[];
    expect(cmd.slice(0, 2)).toEqual(['node', '-e']);
    expect(cmd[2]).toContain('/health');
    expect(cmd[2]).toContain(`process.env.SMG_PORT || ${d.port}`);
  });
});

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/** compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt} */
function interpolate(text: string, vars: Record<string, string | undefined>): string {
  return text.replace(
    /\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g,
    (
      _all,
      dollar: string | undefined,
      name: string | undefined,
      op: string | undefined,
      arg = '',
      bare?: string,
    ) => {
      if (dollar) return '$';
      if (bare) return vars[bare] ?? '';
      const value = vars[name as string];
      const unset = op?.startsWith(':') ? value === undefined || value === '' : value === undefined;
      switch (op?.replace(':', '')) {
        case '-':
          return unset ? arg : (value as string);
        case '?':
          if (unset) throw new Error(`required variable ${name} is missing a value: ${arg}`);
          return value as string;
        case '+':
          return unset ? '' : arg;
        default:
          return value ?? '';
      }
    },
  );
}

function interpolateAll(value: unknown, vars: Record<string, string | undefined>): unknown {
  if (typeof value === 'string') return interpolate(value, vars);
  if (Array.isArray(value)) return value.map((v) => interpolateAll(v, vars));
  if (value !== null && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateAll(v, vars)]));
  return value;
}

interface Service {
  image?: string;
  build?: string | { context?: string };
  command?: string | (string | number)[];
  environment?: Record<string, string | number | null> | string[];
  ports?: (string | number)[];
  volumes?: (string | { type?: string; source?: string; target?: string })[];
  networks?: string[] | Record<string, { aliases?: string[] } | null>;
  depends_on?: string[] | Record<string, { condition?: string }>;
  healthcheck?: { test?: string | string[] };
  stop_grace_period?: string;
}

interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

function loadCompose(vars: Record<string, string | undefined>): Compose {
  const doc = parseYaml(read('docker-compose.yml'), { merge: true }) as Compose;
  return interpolateAll(doc, vars) as Compose;
}

/** a command as argv: lists as they are, strings split like a shell would (quotes, no expansion) */
function argvOf(command: Service['command']): string[] {
  if (command === undefined) return [];
  if (Array.isArray(command)) return command.map(String);
  return [...command.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}

function envOf(environment: Service['environment']): Record<string, string> {
  if (environment === undefined) return {};
  if (Array.isArray(environment)) {
    return Object.fromEntries(
      environment.map((e) => {
        const eq = e.indexOf('=');
        return eq < 0 ? [e, ''] : [e.slice(0, eq), e.slice(eq + 1)];
      }),
    );
  }
  return Object.fromEntries(
    Object.entries(environment)
      .filter(([, v]) => v !== null)
      .map(([k, v]) => [k, String(v)]),
  );
}

function isSmgImage(svc: Service): boolean {
  const context = typeof svc.build === 'string' ? svc.build : svc.build?.context;
  return (context !== undefined && resolve(ROOT, context) === ROOT) || /^smg(:|$)/.test(svc.image ?? '');
}

function seconds(duration: string | undefined): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(duration ?? '');
  if (!m) return 10; // compose's default stop grace period
  return Number(m[1]) * (m[2] === 'ms' ? 0.001 : m[2] === 'm' ? 60 : 1);
}

/** everything the compose tests look at, parsed once (lazily, so a bad command fails a test, not the file) */
const composeSetup = (() => {
  let cached: ReturnType<typeof build> | undefined;
  function build() {
    const compose = loadCompose({ SMG_MESH_CLUSTER_KEY: TEST_KEY });
    const services = Object.entries(compose.services).filter(([, s]) => isSmgImage(s));
    const byCommand = (sub: string) => services.filter(([, s]) => argvOf(s.command)[0] === sub);
    const gateways = byCommand('launch');
    const mocks = byCommand('mock-worker');
    expect(mocks).toHaveLength(1);
    const [mockName, mock] = mocks[0];
    const mockOpts = parseMockWorkerArgs(argvOf(mock.command).slice(1));
    const mockUrls = Array.from(
      { length: mockOpts.count },
      (_, i) => `http://${mockName}:${mockOpts.port + i}`,
    );
    const configs = gateways.map(([name, svc]) => {
      const argv = argvOf(svc.command).slice(1);
      return { name, svc, cfg: parseLaunchArgs(argv, { ...IMAGE_ENV, ...envOf(svc.environment) }) };
    });
    return { compose, services, gateways, mocks, mock, mockOpts, mockUrls, configs };
  }
  return () => (cached ??= build());
})();

describe('docker-compose.yml', () => {
  it('refuses to start without a cluster key and says how to make one', () => {
    expect(() => loadCompose({})).toThrow(/SMG_MESH_CLUSTER_KEY.*openssl rand -base64 32/);
    expect(() => loadCompose({ SMG_MESH_CLUSTER_KEY: '' })).toThrow(/SMG_MESH_CLUSTER_KEY/);
    // the interpolation rules the test relies on
    expect(interpolate('${A:-x} ${B-y} $$C ${A:+z}', { A: '', B: '' })).toBe('x  $C ');
  });

  it('runs three gateway peers and one mock engine service, all from the smg image', () => {
    const { services, gateways, mocks } = composeSetup();
    expect(gateways.map(([n]) => n).sort()).toEqual(['smg-1', 'smg-2', 'smg-3']);
    expect(mocks.map(([n]) => n)).toEqual(['mock']);
    expect(services).toHaveLength(4);
  });

  it('starts the mock engines on all interfaces, with a health check on their port', () => {
    const { mock, mockOpts } = composeSetup();
    expect(mockOpts).toMatchObject({
      host: '0.0.0.0',
      port: 8000,
      count: 3,
      model: 'mock-model',
      help: false,
    });
    const test = mock.healthcheck?.test;
    expect(Array.isArray(test) ? test.join(' ') : test).toContain(`127.0.0.1:${mockOpts.port}/health`);
  });

  it('gives every peer a configuration parseLaunchArgs accepts: mesh on, keyed, 3 seeds, /data', () => {
    const { configs } = composeSetup();
    for (const { name, cfg } of configs) {
      expect(cfg.mesh.enabled, name).toBe(true);
      expect(cfg.mesh.clusterKeys, name).toEqual([TEST_KEY]);
      expect(cfg.mesh.insecure, name).toBe(false);
      expect(cfg.mesh.dataDir, name).toBe('/data');
      expect(cfg.mesh.host, name).toBe('0.0.0.0');
      // left to the gateway: the container's first non-loopback IPv4
      expect(cfg.mesh.advertiseHost, name).toBeUndefined();
      expect(cfg.mesh.seeds, name).toHaveLength(3);
    }
  });

  it('passes the cluster key in the environment, never in a command line `ps` would show', () => {
    const { services } = composeSetup();
    for (const [name, svc] of services) {
      const argv = argvOf(svc.command);
      expect(argv.join(' '), name).not.toContain(TEST_KEY);
      expect(argv, name).not.toContain('--mesh-cluster-key');
    }
  });

  it('names every peer after its service, and seeds every peer with all three', () => {
    const { configs } = composeSetup();
    const names = configs.map((c) => c.cfg.mesh.nodeName);
    expect(new Set(names).size).toBe(configs.length);
    expect(names).toEqual(configs.map((c) => c.name));
    const expected = configs.map((c) => `${c.name}:${c.cfg.mesh.port}`).sort();
    for (const { cfg } of configs) expect([...cfg.mesh.seeds].sort()).toEqual(expected);
  });

  it('points every peer at the mock engines', () => {
    const { mockUrls, configs } = composeSetup();
    for (const { name, cfg } of configs) expect(cfg.workerUrls, name).toEqual(mockUrls);
    for (const { svc } of configs)
      expect(svc.depends_on).toMatchObject({ mock: { condition: 'service_healthy' } });
  });

  it('mounts a named volume of its own at /data on every peer', () => {
    const { compose, configs } = composeSetup();
    const sources = configs.map(({ name, svc }) => {
      const mounts = (svc.volumes ?? []).map((v) =>
        typeof v === 'string' ? { source: v.split(':')[0], target: v.split(':')[1] } : v,
      );
      const data = mounts.filter((m) => m.target === '/data');
      expect(data, name).toHaveLength(1);
      const source = data[0].source ?? '';
      expect(Object.keys(compose.volumes ?? {}), `${name}: ${source} is a named volume`).toContain(source);
      return source;
    });
    expect(new Set(sources).size).toBe(configs.length);
  });

  it('puts all peers, and only them, behind the network alias smg', () => {
    const { mock, configs } = composeSetup();
    const aliases = (svc: Service) =>
      Array.isArray(svc.networks) || svc.networks === undefined ? [] : (svc.networks.default?.aliases ?? []);
    for (const { name, svc } of configs) expect(aliases(svc), name).toContain('smg');
    expect(aliases(mock)).not.toContain('smg');
  });

  it('publishes host ports 30000, 30010 and 30020 onto each peer’s HTTP port', () => {
    const { configs } = composeSetup();
    const published = configs.map(({ svc, cfg }) => {
      expect(svc.ports).toHaveLength(1);
      const [host, container] = String(svc.ports?.[0]).split(':');
      expect(Number(container)).toBe(cfg.port);
      return Number(host);
    });
    expect(published).toEqual([30000, 30010, 30020]);
  });

  it('lets a peer drain before compose kills it', () => {
    const { configs } = composeSetup();
    for (const { name, svc, cfg } of configs)
      expect(seconds(svc.stop_grace_period), name).toBeGreaterThan(cfg.shutdownGracePeriodSecs);
  });
});

// ---------------------------------------------------------------------------------------------
// the demo's plan

describe('demo', () => {
  it('parses --port and --host (loopback unless told otherwise) and rejects anything else', () => {
    expect(parseDemoArgs([])).toEqual({ port: 30000, host: '127.0.0.1', help: false });
    expect(parseDemoArgs(['--port', '40000'])).toEqual({ port: 40000, host: '127.0.0.1', help: false });
    expect(parseDemoArgs(['--port=40000', '--host', '0.0.0.0'])).toEqual({
      port: 40000,
      host: '0.0.0.0',
      help: false,
    });
    expect(parseDemoArgs(['--host=::1']).host).toBe('::1');
    expect(parseDemoArgs(['--help']).help).toBe(true);
    for (const bad of [
      ['--port'],
      ['--port', 'x'],
      ['--port', '500'],
      ['--port', '65000'],
      ['--policy', 'random'],
      ['--host'],
      ['--host', 'not an address'],
    ])
      expect(() => parseDemoArgs(bad), bad.join(' ')).toThrow(DemoArgsError);
  });

  it('plans three peers whose arguments parseLaunchArgs accepts, with the workers on the first only', () => {
    const key = generateClusterKey();
    expect(parseClusterKey(key)).toHaveLength(CLUSTER_KEY_BYTES);
    const engines = demoEngineUrls(30000);
    expect(engines).toHaveLength(DEMO_ENGINES);
    const registered = engines.slice(0, DEMO_REGISTERED_ENGINES);
    const peers = planDemoPeers({
      port: 30000,
      clusterKey: key,
      dataRoot: '/tmp/smg-demo-x',
      workerUrls: registered,
    });
    expect(peers).toHaveLength(DEMO_PEERS);
    // the key travels in the environment: `ps` shows the arguments
    for (const p of peers) expect(p.args.join(' ')).not.toContain(key);
    const cfgs = peers.map((p) => parseLaunchArgs(p.args, p.env));
    expect(cfgs.map((c) => c.port)).toEqual([30000, 30010, 30020]);
    expect(cfgs.map((c) => c.mesh.port)).toEqual([30001, 30011, 30021]);
    expect(cfgs.map((c) => c.prometheusPort)).toEqual([29000, 29010, 29020]);
    expect(cfgs.map((c) => c.mesh.nodeName)).toEqual(['demo-1', 'demo-2', 'demo-3']);
    expect(cfgs.map((c) => c.mesh.dataDir)).toEqual(
      ['demo-1', 'demo-2', 'demo-3'].map((n) => join('/tmp/smg-demo-x', n)),
    );
    expect(cfgs.map((c) => c.workerUrls)).toEqual([registered, [], []]);
    for (const [i, c] of cfgs.entries()) {
      expect(c.mesh).toMatchObject({ enabled: true, host: '127.0.0.1', clusterKeys: [key], insecure: false });
      // nothing listens beyond loopback unless --host says so
      expect([c.host, c.prometheusHost]).toEqual(['127.0.0.1', '127.0.0.1']);
      expect(c.mesh.seeds).toEqual(['127.0.0.1:30001', '127.0.0.1:30011', '127.0.0.1:30021']);
      expect(c.policy).toBe('cache_aware');
      expect(c.logLevel).toBe('warn');
      expect(peers[i].url).toBe(`http://127.0.0.1:${c.port}`);
    }
    // no port is used twice, engines included
    const ports = [
      ...cfgs.flatMap((c) => [c.port, c.mesh.port, c.prometheusPort]),
      ...engines.map((u) => Number(new URL(u).port)),
    ];
    expect(new Set(ports).size).toBe(ports.length);
  });

  it('derives every port from --port', () => {
    const peers = planDemoPeers({ port: 40000, clusterKey: TEST_KEY, dataRoot: '/d', workerUrls: [] });
    expect(peers.map((p) => [p.port, p.meshPort, p.prometheusPort])).toEqual([
      [40000, 40001, 39000],
      [40010, 40011, 39010],
      [40020, 40021, 39020],
    ]);
    expect(demoEngineUrls(40000)[0]).toBe('http://127.0.0.1:41001');
    for (const p of peers) expect(() => parseLaunchArgs(p.args, p.env)).not.toThrow();
  });

  it('binds the peers where --host says, and prints addresses a local client reaches', () => {
    const plan = (host: string) =>
      planDemoPeers({ port: 40000, host, clusterKey: TEST_KEY, dataRoot: '/d', workerUrls: [] });
    for (const [host, url] of [
      ['0.0.0.0', 'http://127.0.0.1:40000'],
      ['::', 'http://[::1]:40000'],
      ['127.0.0.2', 'http://127.0.0.2:40000'],
    ]) {
      const [first] = plan(host);
      const cfg = parseLaunchArgs(first.args, {});
      expect([cfg.host, cfg.prometheusHost, cfg.mesh.host]).toEqual([host, host, '127.0.0.1']);
      expect(first.url).toBe(url);
    }
  });

  it('counts the alive members in a /mesh/status answer', () => {
    const node = (name: string, status: string) => ({ name, address: `${name}:30001`, status, self: false });
    const status = {
      node_name: 'demo-1',
      node_count: 3,
      nodes: [node('demo-1', 'alive'), node('demo-2', 'suspect'), node('demo-3', 'alive')],
      stores: { membership_count: 3, worker_count: 3, policy_count: 0, app_count: 0 },
    };
    expect(countAliveNodes(status)).toBe(2);
    expect(countAliveNodes({ ...status, nodes: status.nodes.map((n) => ({ ...n, status: 'alive' })) })).toBe(
      3,
    );
    expect(countAliveNodes({ members: [{ state: 'ALIVE' }, { state: 'dead' }] })).toBe(1);
    expect(countAliveNodes({ cluster: { alive_nodes: 3 } })).toBe(3);
    expect(countAliveNodes({ error: { code: 'mesh_disabled' } })).toBeUndefined();
    expect(countAliveNodes('OK')).toBeUndefined();
  });
});
