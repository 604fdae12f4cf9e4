/**
 * Preload that CPU-profiles the process it is loaded into and writes a `.cpuprofile` when the
 * process exits normally (`process.exit`, or the event loop draining). Node 20 refuses
 * `--cpu-prof` in NODE_OPTIONS, so the proxy benchmark starts the gateway with
 *   NODE_OPTIONS=--import=<file URL of dist/bench/cpu-profile-hook.js>  SMG_CPU_PROF_DIR=<dir>
 * The inspector session is in-thread, so its callbacks run synchronously inside the `exit` handler.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.SMG_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable', () => {
    session.post('Profiler.setSamplingInterval', { interval: 500 }, () => {
      session.post('Profiler.start');
    });
  });
  process.once('exit', () => {
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `smg-${process.pid}-${Date.now()}.cpuprofile`);
      writeFileSync(file, JSON.stringify(res.profile));
    });
  });
}
