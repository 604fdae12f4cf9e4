/**
 * nginx as a reference reverse proxy for the proxy benchmark. Finds a binary (SMG_BENCH_NGINX,
 * /usr/sbin/nginx, PATH, or one extracted earlier), or else extracts Debian's `nginx` package
 * without installing it (`apt-get download` + `dpkg -x`, so no service starts), once per machine.
 * Runs it as our own foreground process with a generated config in a temp dir.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { log } from './common.js';

const EXTRACT_DIR = path.join(os.tmpdir(), 'smg-bench-nginx');
const EXTRACTED_BIN = path.join(EXTRACT_DIR, 'root', 'usr', 'sbin', 'nginx');

export type NginxBinary = { bin: string; version: string; source: string } | { bin: null; reason: string };

function version(bin: string): string {
  // nginx -v prints to stderr and exits 0
  const r = spawnSync(bin, ['-v'], { encoding: 'utf8', timeout: 5000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  if (r.status !== 0 || !/nginx version/.test(out))
    throw new Error(r.error?.message ?? (out || `exit ${r.status}`));
  return out;
}

function onPath(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'nginx');
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

function tryBinary(bin: string, source: string): NginxBinary | undefined {
  if (!existsSync(bin)) return undefined;
  try {
    return { bin, version: version(bin), source };
  } catch (err) {
    log(`nginx at ${bin} does not run: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
}

/** apt-get download nginx + dpkg -x into EXTRACT_DIR; returns an error message or undefined */
function extractDebianNginx(): string | undefined {
  mkdirSync(EXTRACT_DIR, { recursive: true });
  const run = (cmd: string, args: string[], timeout: number) =>
    execFileSync(cmd, args, {
      cwd: EXTRACT_DIR,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout,
      encoding: 'utf8',
    });
  const download = () => {
    for (const pkg of ['nginx', 'nginx-light']) {
      try {
        run('apt-get', ['download', pkg], 120_000);
        return undefined;
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        if (pkg === 'nginx-light') return (e.stderr || e.message).trim().split('\n').slice(-2).join(' ');
      }
    }
    return 'apt-get download failed';
  };
  let err = download();
  if (err !== undefined) {
    // the package lists may be missing: update once, then retry once
    try {
      log('nginx: apt-get update');
      run('apt-get', ['update', '-qq'], 180_000);
    } catch (e) {
      return `apt-get update failed: ${(e as Error).message.split('\n')[0]}`;
    }
    err = download();
    if (err !== undefined) return `apt-get download nginx failed: ${err}`;
  }
  const deb = readdirSync(EXTRACT_DIR).find(
    (f) => /^nginx(-light)?_.*\.deb$/.test(f) && !f.includes('common'),
  );
  if (!deb) return 'no nginx .deb after apt-get download';
  try {
    run('dpkg', ['-x', deb, 'root'], 60_000);
  } catch (e) {
    return `dpkg -x failed: ${(e as Error).message.split('\n')[0]}`;
  }
  return existsSync(EXTRACTED_BIN) ? undefined : `${deb} has no usr/sbin/nginx`;
}

/** finds or fetches an nginx binary; never throws */
export function findNginx(opts: { allowDownload: boolean }): NginxBinary {
  const env = process.env.SMG_BENCH_NGINX;
  if (env)
    return tryBinary(env, 'SMG_BENCH_NGINX') ?? { bin: null, reason: `SMG_BENCH_NGINX=${env} does not run` };
  const found =
    tryBinary('/usr/sbin/nginx', 'system') ??
    (onPath() ? tryBinary(onPath() as string, 'PATH') : undefined) ??
    tryBinary(EXTRACTED_BIN, 'extracted earlier');
  if (found) return found;
  if (!opts.allowDownload) return { bin: null, reason: 'nginx not installed (download disabled)' };
  if (process.platform !== 'linux' || !existsSync('/usr/bin/apt-get')) {
    return { bin: null, reason: 'nginx not installed and no apt-get to fetch it' };
  }
  log('nginx: not installed; extracting the Debian package (apt-get download + dpkg -x, no service started)');
  const err = extractDebianNginx();
  if (err) return { bin: null, reason: err };
  return (
    tryBinary(EXTRACTED_BIN, 'apt-get download + dpkg -x') ?? {
      bin: null,
      reason: 'extracted nginx does not run',
    }
  );
}

export interface NginxProc {
  url: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

const running = new Set<NginxProc>();

/** stops every nginx started here (for signal handlers) */
export async function stopAllNginx(): Promise<void> {
  await Promise.all([...running].map((n) => n.stop()));
}

/**
 * starts nginx in the foreground (`daemon off`) proxying 127.0.0.1:<listenPort> → upstream, with
 * `workers` worker processes ('auto' = one per core)
 */
export async function startNginx(
  bin: string,
  listenPort: number,
  upstream: string,
  workers: number | 'auto' = 'auto',
): Promise<NginxProc> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'smg-bench-nginx-run-'));
  const up = new URL(upstream);
  const conf = `daemon off;
master_process on;
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream up { server ${up.hostname}:${up.port}; keepalive 128; }
  server {
    listen 127.0.0.1:${listenPort};
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`;
  writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child: ChildProcess = spawn(
    bin,
    ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = `http://127.0.0.1:${listenPort}`;
  const stop = async () => {
    running.delete(proc);
    if (child.exitCode === null && child.signalCode === null) {
      // SIGQUIT = graceful; SIGKILL after 5 s (the master takes its workers with it on SIGTERM)
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const proc: NginxProc = { url, pid: child.pid, stop };
  running.add(proc);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`nginx exited with ${child.exitCode}: ${out}`);
    }
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return proc;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`nginx did not answer in 10 s: ${out}`);
}
