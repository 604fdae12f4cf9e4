import { describe, expect, it } from 'vitest';
import { Awareness, BroadcastQueue, Suspicion, retransmitLimit, suspicionMinTimeoutMs } from './member.js';
import { Simulator } from './simulator.js';

describe('suspicion timeouts', () => {
  it('scales the minimum with log10 of the cluster size, never below one multiple', () => {
    expect(suspicionMinTimeoutMs(4, 1, 1000)).toBe(4000);
    expect(suspicionMinTimeoutMs(4, 10, 1000)).toBe(4000);
    expect(suspicionMinTimeoutMs(4, 100, 1000)).toBe(8000);
    expect(suspicionMinTimeoutMs(4, 1000, 1000)).toBeCloseTo(12000);
  });

  it('retransmits 4 × ceil(log10(N+1)) times', () => {
    expect(retransmitLimit(4, 1)).toBe(4);
    expect(retransmitLimit(4, 9)).toBe(4);
    expect(retransmitLimit(4, 10)).toBe(8);
    expect(retransmitLimit(4, 120)).toBe(12);
  });

  it('shrinks from max towards min on a log scale as confirmations arrive', () => {
    const t = (n: number): number => Suspicion.timeoutMs(n, 2, 8000, 48000);
    expect(t(0)).toBe(48000);
    expect(t(1)).toBeLessThan(48000);
    expect(t(1)).toBeGreaterThan(8000);
    // log scale: the first confirmation buys more than the second
    expect(48000 - t(1)).toBeGreaterThan(t(1) - t(2));
    expect(t(2)).toBe(8000);
    expect(Suspicion.timeoutMs(5, 0, 8000, 48000)).toBe(8000);
  });

  it('fires at max without confirmations and earlier with them; ignores repeats and the originator', () => {
    const sim = new Simulator({ seed: 1 });
    const { clock } = sim.addHost('a:1');
    let firedAt = -1;
    const s = new Suspicion(clock, 'origin', 2, 8000, 48000, () => {
      firedAt = sim.now();
    });
    sim.run(1000);
    expect(s.confirm('origin')).toBe(false);
    expect(s.confirm('b')).toBe(true);
    expect(s.confirm('b')).toBe(false);
    sim.run(4000);
    expect(s.confirm('c')).toBe(true);
    // both expected confirmations arrived: the timeout is now min, counted from the start
    expect(s.confirm('d')).toBe(false);
    expect(s.confirmationCount).toBe(2);
    sim.run(7999);
    expect(firedAt).toBe(-1);
    sim.run(8000);
    expect(firedAt).toBe(8000);

    let fired2 = -1;
    new Suspicion(clock, 'x', 2, 8000, 48000, () => {
      fired2 = sim.now();
    });
    sim.run(60_000);
    expect(fired2).toBe(8000 + 48000);
  });

  it('drops to the unanimous timeout once every member the rule asks for has suspected', () => {
    const sim = new Simulator({ seed: 1 });
    const { clock } = sim.addHost('a:1');
    let firedAt = -1;
    // 8 members: the suspect plus 7 suspectors; expected 2 confirmations bring it to min (4 s)
    const s = new Suspicion(clock, 'n1', 2, 4000, 24_000, () => (firedAt = sim.now()), {
      suspectors: 7,
      ms: 2500,
    });
    sim.run(500);
    expect(s.confirm('n2')).toBe(true);
    expect(s.confirm('n3')).toBe(true);
    // beyond the expected confirmations they still count (and are worth gossiping) towards unanimity
    for (const n of ['n4', 'n5', 'n6']) expect(s.confirm(n)).toBe(true);
    expect(s.isUnanimous).toBe(false);
    expect(s.confirm('n7')).toBe(true);
    expect(s.isUnanimous).toBe(true);
    expect(s.confirm('n8')).toBe(false);
    sim.run(2499);
    expect(firedAt).toBe(-1);
    sim.run(2500);
    expect(firedAt).toBe(2500);

    // the rule never lengthens a timeout: fired at once when unanimity comes after the time is up
    let late = -1;
    const t = new Suspicion(clock, 'x', 0, 4000, 24_000, () => (late = sim.now()), {
      suspectors: 2,
      ms: 1000,
    });
    sim.run(4000);
    expect(t.confirm('y')).toBe(true);
    sim.run(4000);
    expect(late).toBe(4000);
  });

  it('never fires once cancelled', () => {
    const sim = new Simulator({ seed: 1 });
    const { clock } = sim.addHost('a:1');
    let fired = false;
    const s = new Suspicion(clock, 'o', 0, 100, 600, () => {
      fired = true;
    });
    s.cancel();
    sim.run(10_000);
    expect(fired).toBe(false);
  });
});

describe('awareness', () => {
  it('stays within 0..max-1 and scales timeouts by score+1', () => {
    const a = new Awareness(8);
    a.apply(-3);
    expect(a.score).toBe(0);
    expect(a.scale(500)).toBe(500);
    a.apply(3);
    expect(a.scale(500)).toBe(2000);
    a.apply(100);
    expect(a.score).toBe(7);
    expect(a.scale(1000)).toBe(8000);
  });
});

describe('broadcast queue', () => {
  const bytes = (n: number, fill = 0): Uint8Array => new Uint8Array(n).fill(fill);

  it('sends least transmitted, then newest first, and retires items at the limit', () => {
    const q = new BroadcastQueue();
    q.push('a', bytes(10, 1));
    q.push('b', bytes(10, 2));
    expect(q.take(1000, 2, 2, 1)[0][0]).toBe(2);
    // b was sent once; a never: a comes first now
    expect(q.take(1000, 2, 2, 1)[0][0]).toBe(1);
    expect(q.take(1000, 2, 2, 10).map((b) => b[0])).toEqual([2, 1]);
    expect(q.size).toBe(0);
  });

  it('replaces an older item about the same member and tells its waiter', () => {
    const q = new BroadcastQueue();
    let done = 0;
    q.push('a', bytes(5, 1), () => done++);
    q.push('a', bytes(5, 2));
    expect(done).toBe(1);
    expect(q.size).toBe(1);
    expect(q.take(1000, 2, 3, 10)[0][0]).toBe(2);
  });

  it('respects the byte budget, skipping items that do not fit', () => {
    const q = new BroadcastQueue();
    q.push('big', bytes(100, 1));
    q.push('small', bytes(10, 2));
    q.push('mid', bytes(40, 3));
    const got = q.take(60, 2, 5, 10);
    expect(got.map((b) => b[0])).toEqual([3, 2]);
    expect(got.reduce((s, b) => s + b.length + 2, 0)).toBeLessThanOrEqual(60);
  });

  it('keeps suspicions from different suspectors side by side; plain news about the member replaces all', () => {
    const q = new BroadcastQueue();
    q.push('m', bytes(1, 1));
    q.push('m', bytes(1, 2), undefined, 'x');
    q.push('m', bytes(1, 3), undefined, 'y');
    // the suspicion replaced the plain item, the two suspectors coexist
    expect(q.take(1000, 2, 10, 10).map((x) => x[0])).toEqual([3, 2]);
    q.push('m', bytes(1, 4), undefined, 'x');
    expect(q.size).toBe(2);
    q.push('m', bytes(1, 5));
    expect(q.size).toBe(1);
    expect(q.take(1000, 2, 10, 10).map((x) => x[0])).toEqual([5]);
    // retiring the last item forgets the member entirely
    q.take(1000, 2, 2, 10);
    expect(q.size).toBe(0);
    q.push('m', bytes(1, 6), undefined, 'x');
    expect(q.size).toBe(1);
  });

  it('calls onDone when an item is retired by its transmit limit', () => {
    const q = new BroadcastQueue();
    let done = false;
    q.push('a', bytes(1), () => {
      done = true;
    });
    q.take(100, 2, 2, 10);
    expect(done).toBe(false);
    q.take(100, 2, 2, 10);
    expect(done).toBe(true);
  });
});
