// `npm run test:deploy`: the real image and the real compose cluster.
//
// 1. a Docker engine: the running one, or `dockerd` started here (and stopped at the end);
// 2. the Dockerfile's base image: `node:<major>-slim` as it is, or its local stand-in built by
//    .ci/deploy/base-image.sh when no registry can provide it;
// 3. `docker build -t smg:local .` with the Dockerfile unchanged;
// 4. chaos/deploy/*.test.ts (vitest, SMG_TEST_DEPLOY=1), ending with `N passed, N failed`.
//
// Removes what it built (the smg:local image, the base image if it built it, dangling build layers)
// when CI=true or with --clean; keeps them otherwise, so a second run skips steps 2 and 3's work.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
process.chdir(root);
const clean = process.env.CI === 'true' || process.argv.includes('--clean');
const baseMajor = /^FROM node:(\d+)-slim/m.exec(readFileSync('Dockerfile', 'utf8'))?.[1];
if (!baseMajor) {
  console.error('test:deploy: the Dockerfile names no node:<major>-slim base image');
  process.exit(2);
}
const baseTag = `node:${baseMajor}-slim`;
const times = {};

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, {
    stdio: opts.quiet ? 'pipe' : 'inherit',
    env: { ...process.env, ...opts.env },
  });
  return r.status ?? 1;
}
const ok = (cmd, args) => sh(cmd, args, { quiet: true }) === 0;
const timed = (name, fn) => {
  const t0 = Date.now();
  const r = fn();
  times[name] = Math.round((Date.now() - t0) / 100) / 10;
  return r;
};

let dockerd;
async function ensureDocker() {
  if (ok('docker', ['info'])) return;
  if (!ok('sh', ['-c', 'command -v dockerd'])) {
    throw new Error(
      "no Docker engine and no dockerd: install Debian's docker.io (apt-get install docker.io)",
    );
  }
  const logDir = mkdtempSync(path.join(tmpdir(), 'smg-dockerd-'));
  const fd = openSync(path.join(logDir, 'dockerd.log'), 'a');
  dockerd = spawn('dockerd', [], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  console.log(`test:deploy: started dockerd (pid ${dockerd.pid}, log ${logDir}/dockerd.log)`);
  const deadline = Date.now() + 60_000;
  while (!ok('docker', ['info'])) {
    if (dockerd.exitCode !== null || Date.now() > deadline) {
      throw new Error(`dockerd did not come up; see ${logDir}/dockerd.log`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function stopDockerd() {
  if (!dockerd || dockerd.exitCode !== null) return;
  const exited = new Promise((r) => dockerd.once('exit', r));
  dockerd.kill('SIGTERM');
  const timer = setTimeout(() => dockerd.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
  console.log('test:deploy: stopped dockerd');
}

let code = 1;
let builtBase = false;
let builtImage = false;
try {
  await ensureDocker();
  // the base image: pulled or present as it is, else its stand-in (no registry here)
  if (!ok('docker', ['image', 'inspect', baseTag]) && !ok('docker', ['pull', baseTag])) {
    builtBase = true;
    const rc = timed('baseImageS', () => sh('bash', ['.ci/deploy/base-image.sh', baseMajor]));
    if (rc !== 0) throw new Error('the base image stand-in did not build');
  }
  // the legacy builder when this client has no buildx (Debian's docker.io)
  const buildEnv = ok('docker', ['buildx', 'version']) ? {} : { DOCKER_BUILDKIT: '0' };
  builtImage = true;
  const rc = timed('imageBuildS', () => sh('docker', ['build', '-t', 'smg:local', '.'], { env: buildEnv }));
  if (rc !== 0) throw new Error('docker build failed');
  code = timed('testsS', () => sh('node', ['.ci/test-summary.mjs'], { env: { SMG_TEST_DEPLOY: '1' } }));
} catch (err) {
  console.error(`test:deploy: ${err instanceof Error ? err.message : String(err)}`);
  console.log('0 passed, 1 failed');
} finally {
  if (clean) {
    if (builtImage) sh('docker', ['image', 'rm', '-f', 'smg:local'], { quiet: true });
    if (builtBase) sh('docker', ['image', 'rm', '-f', baseTag], { quiet: true });
    if (builtImage || builtBase) sh('docker', ['image', 'prune', '-f'], { quiet: true });
  }
  await stopDockerd();
  console.log(`test:deploy: times ${JSON.stringify(times)}`);
}
process.exit(code);
