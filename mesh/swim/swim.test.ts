import { describe, expect, it } from 'vitest';
import { encodeMessage, encodePacket, type Message } from './messages.js';
import { Simulator, createSimMembers, type SimMember } from './simulator.js';
import { SwimNode } from './swim.js';
import type { MemberState } from './member.js';

function cluster(
  n: number,
  seed: number,
  lossRate = 0,
): { sim: Simulator; members: SimMember[]; inject: (to: SimMember, ...msgs: Message[]) => void } {
  const sim = new Simulator({ seed, lossRate, latencyMs: { min: 1, max: 10 } });
  const members = createSimMembers(sim, n);
  members[0].node.start();
  members.forEach((m, i) => {
    if (i > 0) sim.at(i * 10, () => void m.node.join([members[0].address]));
  });
  expect(sim.runUntil(() => members.every((m) => m.node.stats().members.alive === n), 60_000)).toBe(true);
  // a host outside the cluster that sends hand-made packets
  const rogue = sim.addHost('10.9.9.9:7946');
  const inject = (to: SimMember, ...msgs: Message[]): void =>
    rogue.transport.send(to.address, encodePacket(msgs.map(encodeMessage)));
  return { sim, members, inject };
}

function statesOf(members: SimMember[], name: string): MemberState[] {
  return members.filter((m) => m.name !== name).map((m) => m.node.member(name)?.state ?? 'dead');
}

describe('swim protocol', () => {
  it('refutes a suspicion by raising its incarnation, and everyone accepts the refutation', () => {
    const { sim, members, inject } = cluster(8, 11);
    const [, target, accuser] = members;
    inject(accuser, { type: 'suspect', node: target.name, incarnation: 0, from: 'rogue' });
    sim.runFor(20);
    expect(accuser.node.member(target.name)?.state).toBe('suspect');
    sim.runFor(3000);
    expect(target.node.incarnation).toBe(1);
    expect(target.node.stats().selfRefutations).toBe(1);
    expect(target.node.healthScore).toBeGreaterThanOrEqual(0);
    for (const m of members) {
      if (m === target) continue;
      expect(m.node.member(target.name)).toMatchObject({ state: 'alive', incarnation: 1 });
    }
    expect(accuser.node.stats().suspicionsRefuted).toBe(1);
  });

  it('orders news by incarnation: stale news is ignored, newer news wins', () => {
    const { sim, members, inject } = cluster(5, 12);
    const [, a, b] = members;
    // a refutes twice, so it sits at incarnation 2 everywhere
    inject(b, { type: 'suspect', node: a.name, incarnation: 0, from: 'rogue' });
    sim.runFor(3000);
    inject(b, { type: 'dead', node: a.name, incarnation: 1, from: 'rogue' });
    sim.runFor(3000);
    expect(a.node.incarnation).toBe(2);
    expect(b.node.member(a.name)).toMatchObject({ state: 'alive', incarnation: 2 });

    // stale suspicion and death (lower incarnation) change nothing and trigger no refutation
    inject(
      b,
      { type: 'suspect', node: a.name, incarnation: 1, from: 'rogue' },
      { type: 'dead', node: a.name, incarnation: 0, from: 'rogue' },
    );
    sim.runFor(1000);
    expect(b.node.member(a.name)?.state).toBe('alive');
    expect(a.node.incarnation).toBe(2);

    // an alive at the same incarnation with other meta does not override; a higher one does
    inject(b, {
      type: 'alive',
      node: members[3].name,
      address: members[3].address,
      incarnation: 0,
      meta: { x: '1' },
    });
    sim.runFor(10);
    expect(b.node.member(members[3].name)?.meta).toEqual({});

    // someone claims a newer version of a: a outbids it rather than letting it stand
    inject(b, { type: 'alive', node: a.name, address: a.address, incarnation: 7, meta: { fake: 'yes' } });
    sim.runFor(3000);
    expect(a.node.incarnation).toBe(8);
    for (const m of members) {
      expect(m.node.member(a.name)).toMatchObject({ state: 'alive', incarnation: 8 });
      expect(m.node.member(a.name)?.meta).toEqual({});
    }
  });

  it('spreads metadata changes to every member', () => {
    const { sim, members } = cluster(10, 13);
    const changes: string[] = [];
    members[4].node.onMemberChange((m, prev) => {
      if (m.name === members[2].name && prev === 'alive') changes.push(m.meta.peerId);
    });
    members[2].node.setMeta({ peerId: '12D3KooW', addrs: '/ip4/10.0.0.2/tcp/30001' });
    sim.runFor(2000);
    for (const m of members) expect(m.node.member(members[2].name)?.meta.peerId).toBe('12D3KooW');
    expect(changes).toEqual(['12D3KooW']);
  });

  it('marks a gracefully leaving member left everywhere, never dead', async () => {
    const { sim, members } = cluster(20, 14, 0.05);
    const leaver = members[7];
    let deaths = 0;
    for (const m of members) m.node.onMemberChange((x) => void (x.state === 'dead' && deaths++));
    // a long timeout: the leave must complete because its broadcast went out, not by timing out
    const leaving = leaver.node.leave(60_000);
    expect(sim.runUntil(() => leaver.node.stats().broadcastQueue === 0, 10_000)).toBe(true);
    await leaving;
    expect(leaver.node.member(leaver.name)?.state).toBe('left');
    await leaver.node.shutdown();
    sim.runFor(30_000);
    expect(statesOf(members, leaver.name).every((s) => s === 'left')).toBe(true);
    expect(deaths).toBe(0);
    expect(members[0].node.stats().members).toMatchObject({ alive: 19, left: 1 });
  });

  it('joins through seeds, skipping a dead seed and retrying until a seed comes up', async () => {
    const sim = new Simulator({ seed: 15, lossRate: 0.05 });
    const members = createSimMembers(sim, 30);
    const ghost = sim.addHost('10.0.200.1:7946');
    sim.kill(ghost.address);
    const seeds = [ghost.address, members[0].address, members[1].address];
    // the seeds themselves come up late: every other member must keep retrying until then
    const joined = new Map<string, string | null>();
    for (const m of members.slice(2)) {
      void m.node.join(seeds).then((via) => joined.set(m.name, via));
    }
    sim.runFor(5000);
    expect(joined.size).toBe(0);
    members[0].node.start();
    void members[1].node.join([members[0].address]);
    expect(sim.runUntil(() => members.every((m) => m.node.stats().members.alive === 30), 60_000)).toBe(true);
    await Promise.resolve();
    expect(joined.size).toBe(28);
    for (const via of joined.values()) expect([members[0].address, members[1].address]).toContain(via);
  });

  it('gives up joining after maxAttempts when no seed answers', async () => {
    const sim = new Simulator({ seed: 16 });
    const [m] = createSimMembers(sim, 1);
    const p = m.node.join(['10.5.5.5:1'], { maxAttempts: 3, initialBackoffMs: 100 });
    const outcome = p.then(
      () => 'joined',
      (e: Error) => e.message,
    );
    sim.runFor(10_000);
    expect(await outcome).toMatch(/no seed answered after 3 attempts/);

    // a pending join does not hang past shutdown
    const [n] = createSimMembers(sim, 1, { firstIndex: 1 });
    const pending = n.node.join(['10.5.5.5:1']).then(
      () => 'joined',
      (e: Error) => e.message,
    );
    sim.runFor(5000);
    await n.node.shutdown();
    expect(await pending).toMatch(/shut down before joining/);
  });

  it('converges back to all alive after a partition heals', () => {
    const { sim, members } = cluster(16, 17, 0.02);
    const left = members.slice(0, 8).map((m) => m.address);
    const right = members.slice(8).map((m) => m.address);
    sim.partition([left, right]);
    sim.runFor(40_000);
    // each side has given up on the other
    expect(members[0].node.member(members[12].name)?.state).toBe('dead');
    expect(members[12].node.member(members[0].name)?.state).toBe('dead');
    sim.heal();
    // push-pull (30 s, dead members included) finds the other side; refutations spread from there
    const healed = sim.runUntil(
      () => members.every((m) => m.node.stats().members.alive === 16),
      180_000,
      1000,
    );
    expect(healed).toBe(true);
  });

  it('counts and drops malformed and oversized packets without disturbing the node', () => {
    const { sim, members } = cluster(3, 18);
    const rogue = sim.addHost('10.8.8.8:7946');
    rogue.transport.send(members[1].address, new Uint8Array([1, 1, 0, 3, 99, 0, 0]));
    rogue.transport.send(members[1].address, new Uint8Array(5000));
    sim.runFor(3000);
    expect(members[1].node.stats().dropped).toMatchObject({ malformed: 1, oversized: 1 });
    expect(members[1].node.stats().members.alive).toBe(3);
  });

  it('stops all activity after shutdown', async () => {
    const { sim, members } = cluster(4, 19);
    await members[3].node.shutdown();
    const before = members[3].node.stats().packetsOut;
    sim.runFor(30_000);
    expect(members[3].node.stats().packetsOut).toBe(before);
    expect(members[0].node.member(members[3].name)?.state).toBe('dead');
  });

  it('rejects invalid configuration', () => {
    const sim = new Simulator({ seed: 20 });
    const host = sim.addHost('a:1');
    const make = (config: Record<string, number>): SwimNode =>
      new SwimNode({ ...host, config: { name: 'x', ...config } });
    expect(() => make({ probeTimeoutMs: 1000 })).toThrow(/probeTimeoutMs/);
    expect(() => make({ gossipIntervalMs: 0 })).toThrow(/gossipIntervalMs/);
  });
});
