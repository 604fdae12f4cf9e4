/**
 * Preload that CPU-profiles the process it is loaded into and writes a `.cpuprofile` when the
 * process exits normally (`process.exit`, or the event loop draining). Node 20 refuses
 * `--cpu-prof` in NODE_OPTIONS, so the benchmarks start the gateway with
 *   NODE_OPTIONS=--import=<file URL of dist/bench/cpu-profile-hook.js>  SMG_CPU_PROF_DIR=<dir>
 * SIGUSR2 cuts the profile: what was sampled so far is written, and a new profile starts (the scale
 * benchmark profiles start-up and the idle window apart this way).
 * The inspector session is in-thread, so its callbacks run synchronously inside the `exit` handler.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.SMG_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  let seq = 0;
  const write = (profile: unknown) => {
    mkdirSync(dir, { recursive: true });
    // the sequence number keeps the files of one process in order whatever the clock does
    const file = path.join(
      dir,
      `smg-${process.pid}-${Date.now()}-${String(seq++).padStart(3, '0')}.cpuprofile`,
    );
    writeFileSync(file, JSON.stringify(profile));
  };
  session.post('Profiler.enable', () => {
    session.post('Profiler.setSamplingInterval', { interval: 500 }, () => {
      session.post('Profiler.start');
    });
  });
  process.on('SIGUSR2', () => {
    session.post('Profiler.stop', (err, res) => {
      if (!err && res) write(res.profile);
      session.post('Profiler.start');
    });
  });
  process.once('exit', () => {
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      write(res.profile);
    });
  });
}
