import { describe, expect, it } from 'vitest';
import { Simulator, createSimMembers, seededRandom } from './simulator.js';

const bytes = (n: number): Uint8Array => new Uint8Array([n]);

describe('simulator', () => {
  it('runs events in time order, ties in scheduling order, and cancels timers', () => {
    const sim = new Simulator({ seed: 1 });
    const { clock } = sim.addHost('a:1');
    const log: string[] = [];
    clock.setTimeout(() => log.push('b@20'), 20);
    clock.setTimeout(() => log.push('a@10'), 10);
    clock.setTimeout(() => log.push('c@20'), 20);
    const h = clock.setTimeout(() => log.push('never'), 15);
    clock.clearTimeout(h);
    sim.run(19);
    expect(log).toEqual(['a@10']);
    expect(sim.now()).toBe(19);
    sim.run(100);
    expect(log).toEqual(['a@10', 'b@20', 'c@20']);
  });

  it('delivers within the latency bounds and loses about lossRate of the packets', () => {
    const sim = new Simulator({ seed: 2, lossRate: 0.1, latencyMs: { min: 5, max: 15 } });
    const a = sim.addHost('a:1');
    const b = sim.addHost('b:1');
    const delays: number[] = [];
    b.transport.onPacket((from, p) => {
      expect(from).toBe('a:1');
      delays.push(sim.now() - p[0] * 100);
    });
    for (let i = 0; i < 2000; i++) sim.at(i * 100, () => a.transport.send('b:1', bytes(i % 256)));
    // only send times that fit a byte: compare delays for the first 256 sends
    sim.run(25_599);
    expect(delays.length).toBeGreaterThan(256 * 0.8);
    for (const d of delays) {
      expect(d).toBeGreaterThanOrEqual(5);
      expect(d).toBeLessThanOrEqual(15);
    }
    sim.run(300_000);
    const { lost, sent } = sim.stats;
    expect(sent).toBe(2000);
    expect(lost / sent).toBeGreaterThan(0.07);
    expect(lost / sent).toBeLessThan(0.13);
  });

  it('blocks packets between partition groups, lets ungrouped hosts reach all, and heals', () => {
    const sim = new Simulator({ seed: 3 });
    const [a, b, c] = ['a:1', 'b:1', 'c:1'].map((x) => sim.addHost(x));
    const got: string[] = [];
    for (const h of [a, b, c]) h.transport.onPacket((from) => got.push(`${from}->${h.address}`));
    sim.partition([['a:1'], ['b:1']]);
    a.transport.send('b:1', bytes(1));
    a.transport.send('c:1', bytes(1));
    c.transport.send('b:1', bytes(1));
    sim.runFor(100);
    expect(got.sort()).toEqual(['a:1->c:1', 'c:1->b:1']);
    sim.heal();
    a.transport.send('b:1', bytes(1));
    sim.runFor(100);
    expect(got).toContain('a:1->b:1');
  });

  it('kill stops a host for good: no timers, nothing sent, nothing received', () => {
    const sim = new Simulator({ seed: 4 });
    const a = sim.addHost('a:1');
    const b = sim.addHost('b:1');
    let fired = false;
    let received = 0;
    a.clock.setTimeout(() => (fired = true), 50);
    a.transport.onPacket(() => received++);
    b.transport.send('a:1', bytes(1)); // in flight when the kill lands
    sim.kill('a:1');
    a.transport.send('b:1', bytes(1));
    b.transport.send('a:1', bytes(1));
    sim.runFor(1000);
    expect(fired).toBe(false);
    expect(received).toBe(0);
    expect(sim.stats.delivered).toBe(0);
  });

  it('pause defers timers and packets and replays them in their original order on resume', () => {
    const sim = new Simulator({ seed: 5, latencyMs: { min: 10, max: 10 } });
    const a = sim.addHost('a:1');
    const b = sim.addHost('b:1');
    const log: string[] = [];
    a.transport.onPacket((_from, p) => log.push(`packet ${p[0]} @${sim.now()}`));
    a.clock.setTimeout(() => log.push(`timer @${sim.now()}`), 500);
    sim.at(100, () => sim.pause('a:1'));
    sim.at(200, () => b.transport.send('a:1', bytes(1)));
    sim.at(600, () => b.transport.send('a:1', bytes(2)));
    sim.at(2000, () => sim.resume('a:1'));
    sim.run(1999);
    expect(log).toEqual([]);
    expect(sim.isPaused('a:1')).toBe(true);
    sim.run(3000);
    expect(log).toEqual(['packet 1 @2000', 'timer @2000', 'packet 2 @2000']);
  });

  it('replays a run exactly from its seed', () => {
    const run = (seed: number): string => {
      const sim = new Simulator({ seed, lossRate: 0.05 });
      const members = createSimMembers(sim, 20);
      members[0].node.start();
      for (const m of members.slice(1)) void m.node.join([members[0].address]);
      sim.run(20_000);
      sim.kill(members[5].address);
      sim.run(40_000);
      return JSON.stringify([sim.stats, members.map((m) => m.node.stats())]);
    };
    expect(run(7)).toBe(run(7));
    expect(run(7)).not.toBe(run(8));
  });

  it('seeds a uniform PRNG', () => {
    const r = seededRandom(42);
    let sum = 0;
    for (let i = 0; i < 10_000; i++) {
      const x = r();
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
      sum += x;
    }
    expect(sum / 10_000).toBeCloseTo(0.5, 1);
  });
});
