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

  it('probeNow probes one member out of turn, and only an alive or suspect member not already probed', () => {
    const { sim, members } = cluster(5, 21);
    const [a, b, c] = members;
    const probes = (): number => a.node.stats().probes;
    const before = probes();
    a.node.probeNow(b.name);
    expect(probes()).toBe(before + 1);
    // already running: ignored
    a.node.probeNow(b.name);
    expect(probes()).toBe(before + 1);
    // unknown names and itself: ignored
    a.node.probeNow('nobody');
    a.node.probeNow(a.name);
    expect(probes()).toBe(before + 1);
    sim.runFor(50);
    // acked (one round trip is at most 20 ms here): a new probe may start
    a.node.probeNow(b.name);
    expect(probes()).toBe(before + 2);

    // a killed member probed at once is suspected after one probe interval, without waiting its turn
    sim.runFor(1000);
    sim.kill(c.address);
    a.node.probeNow(c.name);
    sim.runFor(1050);
    expect(a.node.member(c.name)?.state).toBe('suspect');
    expect(
      sim.runUntil(() => members.every((m) => m === c || m.node.member(c.name)?.state === 'dead'), 10_000),
    );
    // a dead member is not probed
    const n = probes();
    a.node.probeNow(c.name);
    expect(probes()).toBe(n);
  });

  it('reaps dead and left members after deadReapMs without an event, and re-adds one that comes back', async () => {
    const sim = new Simulator({ seed: 22, latencyMs: { min: 1, max: 10 } });
    const config = { deadReapMs: 60_000, gossipToTheDeadMs: 20_000 };
    const members = createSimMembers(sim, 6, { config });
    members[0].node.start();
    for (const m of members.slice(1)) void m.node.join([members[0].address]);
    expect(sim.runUntil(() => members.every((m) => m.node.stats().members.alive === 6), 30_000)).toBe(true);
    const [a, , , , leaver, victim] = members;
    const events: string[] = [];
    a.node.onMemberChange((m, prev) => events.push(`${m.name}:${prev ?? 'new'}->${m.state}`));
    await Promise.all([leaver.node.leave(), Promise.resolve(sim.runFor(5000))]);
    await leaver.node.shutdown();
    sim.kill(victim.address);
    expect(sim.runUntil(() => a.node.member(victim.name)?.state === 'dead', 30_000)).toBe(true);
    expect(a.node.member(leaver.name)?.state).toBe('left');
    sim.runFor(61_000);
    for (const m of members.slice(0, 4)) {
      expect(m.node.member(victim.name)).toBeUndefined();
      expect(m.node.member(leaver.name)).toBeUndefined();
      expect(m.node.members()).toHaveLength(4);
      expect(m.node.stats().reaped).toBe(2);
    }
    expect(events).toEqual([
      `${leaver.name}:alive->left`,
      `${victim.name}:alive->suspect`,
      `${victim.name}:suspect->dead`,
    ]);

    // the victim's process comes back on the same address with no memory of its incarnation
    const host = sim.restartHost(victim.address);
    const back = new SwimNode({ ...host, config: { ...config, name: victim.name } });
    void back.join([a.address]);
    expect(
      sim.runUntil(
        () => members.slice(0, 4).every((m) => m.node.member(victim.name)?.state === 'alive'),
        10_000,
      ),
    ).toBe(true);
    expect(events.at(-1)).toBe(`${victim.name}:new->alive`);
    expect(back.stats().members.alive).toBe(5);
  });

  it('revives a dead or left member on an alive with a higher incarnation, not on an equal one', () => {
    const { sim, members, inject } = cluster(4, 23);
    const [a, b] = members;
    const ghost = { name: 'ghost', address: '10.7.7.7:7946' };
    sim.addHost(ghost.address);
    inject(a, { type: 'alive', node: ghost.name, address: ghost.address, incarnation: 3, meta: {} });
    sim.runFor(10);
    inject(a, { type: 'dead', node: ghost.name, incarnation: 3, from: 'rogue' });
    sim.runFor(10);
    expect(a.node.member(ghost.name)?.state).toBe('dead');
    inject(a, { type: 'alive', node: ghost.name, address: ghost.address, incarnation: 3, meta: {} });
    sim.runFor(10);
    expect(a.node.member(ghost.name)?.state).toBe('dead');
    inject(a, { type: 'alive', node: ghost.name, address: ghost.address, incarnation: 4, meta: { v: '2' } });
    sim.runFor(10);
    expect(a.node.member(ghost.name)).toMatchObject({ state: 'alive', incarnation: 4, meta: { v: '2' } });

    sim.runFor(2000);
    expect(b.node.member(ghost.name)?.incarnation).toBe(4);
    inject(b, { type: 'leave', node: ghost.name, incarnation: 4 });
    sim.runFor(10);
    expect(b.node.member(ghost.name)?.state).toBe('left');
    inject(b, { type: 'alive', node: ghost.name, address: ghost.address, incarnation: 5, meta: {} });
    sim.runFor(10);
    expect(b.node.member(ghost.name)).toMatchObject({ state: 'alive', incarnation: 5 });
  });

  it('accepts a restarted member (same name and address, stored incarnation + 1) that peers still hold dead', () => {
    const { sim, members } = cluster(8, 24);
    const victim = members[5];
    const others = members.filter((m) => m !== victim);
    sim.kill(victim.address);
    expect(
      sim.runUntil(() => others.every((m) => m.node.member(victim.name)?.state === 'dead'), 30_000),
    ).toBe(true);
    const stored = victim.node.incarnation;
    const prevStates: (string | undefined)[] = [];
    others[0].node.onMemberChange((m, prev) => {
      if (m.name === victim.name) prevStates.push(prev);
    });
    const host = sim.restartHost(victim.address);
    const back = new SwimNode({
      ...host,
      config: { name: victim.name },
      incarnation: stored + 1,
      meta: { run: '2' },
    });
    void back.join([members[0].address]);
    expect(
      sim.runUntil(() => others.every((m) => m.node.member(victim.name)?.state === 'alive'), 10_000),
    ).toBe(true);
    for (const m of others)
      expect(m.node.member(victim.name)).toMatchObject({ incarnation: stored + 1, meta: { run: '2' } });
    expect(prevStates[0]).toBe('dead');
    // the restarted member needed no refutation: its incarnation already beat the news of its death
    expect(back.stats().selfRefutations).toBe(0);
    sim.runFor(30_000);
    expect(back.stats().members.alive).toBe(8);
    for (const m of others) expect(m.node.stats().members.alive).toBe(8);
  });
});
