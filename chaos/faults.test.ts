import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  FAULTS_ENV,
  MeshFaults,
  hostOfAddress,
  meshFaultsFromEnv,
  normalizeHost,
  parseFaults,
} from '../mesh/faults.js';
import { UdpTransport } from '../mesh/swim/udp-transport.js';
import { Cluster, clusterKey, waitFor } from '../mesh/gossip/testkit.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('parseFaults', () => {
  it('accepts the documented shape and defaults missing keys to no fault', () => {
    expect(parseFaults('{"blockHosts":["127.0.0.3","[::1]"],"lossRate":0.25,"delayMs":20}')).toEqual({
      ok: true,
      spec: { blockHosts: ['127.0.0.3', '::1'], lossRate: 0.25, delayMs: 20 },
    });
    expect(parseFaults('{}')).toEqual({ ok: true, spec: { blockHosts: [], lossRate: 0, delayMs: 0 } });
    expect(parseFaults('{"other":1}')).toMatchObject({ ok: true });
  });

  it('rejects what is not valid, with a reason', () => {
    for (const bad of [
      '',
      'nope',
      '[]',
      'null',
      '{"blockHosts":"127.0.0.3"}',
      '{"blockHosts":[1]}',
      '{"blockHosts":[""]}',
      '{"lossRate":1.5}',
      '{"lossRate":-0.1}',
      '{"lossRate":"0.1"}',
      '{"delayMs":-1}',
      '{"delayMs":1e9}',
    ]) {
      const r = parseFaults(bad);
      expect(r.ok, bad).toBe(false);
      if (!r.ok) expect(r.error.length).toBeGreaterThan(0);
    }
  });
});

describe('hosts', () => {
  it('extracts the host of every address form the transports see', () => {
    expect(hostOfAddress('127.0.0.3:7946')).toBe('127.0.0.3');
    expect(hostOfAddress('[::1]:7946')).toBe('::1');
    expect(hostOfAddress('127.0.0.3')).toBe('127.0.0.3');
    expect(hostOfAddress('/ip4/127.0.0.3/tcp/7946/p2p/12D3KooW')).toBe('127.0.0.3');
    expect(hostOfAddress('/ip6/::1/tcp/1')).toBe('::1');
    expect(hostOfAddress('::ffff:127.0.0.3')).toBe('127.0.0.3');
    expect(normalizeHost(' [FE80::1] ')).toBe('fe80::1');
  });
});

describe('MeshFaults drop logic', () => {
  it('blocks both directions for blocked hosts only, counting drops', () => {
    const f = new MeshFaults();
    f.set({ blockHosts: ['127.0.0.3'], lossRate: 0, delayMs: 0 });
    expect(f.outgoing('127.0.0.3:9000')).toBe('drop');
    expect(f.dropIncoming('127.0.0.3:9000')).toBe(true);
    expect(f.outgoing('127.0.0.2:9000')).toBe(0);
    expect(f.dropIncoming('127.0.0.2:9000')).toBe(false);
    expect(f.denyConnection('/ip4/127.0.0.3/tcp/9000')).toBe(true);
    expect(f.denyConnection('/ip4/127.0.0.4/tcp/9000')).toBe(false);
    expect(f.counts).toMatchObject({ blockedOut: 1, blockedIn: 1, deniedConnections: 1 });
  });

  it('drops a lossRate share of datagrams (deterministic random) and delays the rest', () => {
    let i = 0;
    const seq = [0.1, 0.9, 0.29, 0.31];
    const f = new MeshFaults(undefined, undefined, () => seq[i++ % seq.length]);
    f.set({ blockHosts: [], lossRate: 0.3, delayMs: 25 });
    expect([1, 2, 3, 4].map(() => f.outgoing('127.0.0.2:1'))).toEqual(['drop', 25, 'drop', 25]);
    expect([1, 2, 3, 4].map(() => f.dropIncoming('127.0.0.2:1'))).toEqual([true, false, true, false]);
  });

  it('statistically drops about lossRate of datagrams with Math.random', () => {
    const f = new MeshFaults();
    f.set({ blockHosts: [], lossRate: 0.2, delayMs: 0 });
    let dropped = 0;
    for (let k = 0; k < 10_000; k++) if (f.outgoing('127.0.0.2:1') === 'drop') dropped++;
    expect(dropped).toBeGreaterThan(1700);
    expect(dropped).toBeLessThan(2300);
  });

  it('notifies listeners on a change only', () => {
    const f = new MeshFaults();
    const seen: string[][] = [];
    f.onChange((s) => seen.push(s.blockHosts));
    f.set({ blockHosts: ['a'], lossRate: 0, delayMs: 0 });
    f.set({ blockHosts: ['a'], lossRate: 0, delayMs: 0 });
    f.set({ blockHosts: [], lossRate: 0, delayMs: 0 });
    expect(seen).toEqual([['a'], []]);
  });
});

describe('the fault file', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  it('is off without the env var, and follows the file (missing/invalid = no faults, logged once)', async () => {
    expect(meshFaultsFromEnv({})).toBeNull();
    expect(meshFaultsFromEnv({ [FAULTS_ENV]: '' })).toBeNull();
    dir = mkdtempSync(path.join(tmpdir(), 'smg-faults-'));
    const file = path.join(dir, 'faults.json');
    const warnings: string[] = [];
    const logger = { warn: (_o: object, m: string) => warnings.push(m) };
    const f = meshFaultsFromEnv({ [FAULTS_ENV]: file }, logger);
    expect(f).not.toBeNull();
    try {
      expect(f!.current().blockHosts).toEqual([]);
      expect(warnings.filter((w) => w.includes('cannot read'))).toHaveLength(1);
      writeFileSync(file, '{"blockHosts":["127.0.0.9"]}');
      for (let k = 0; k < 40 && !f!.isBlocked('127.0.0.9:1'); k++) await sleep(50);
      expect(f!.isBlocked('127.0.0.9:1')).toBe(true);
      writeFileSync(file, '{"blockHosts": oops');
      for (let k = 0; k < 40 && f!.isBlocked('127.0.0.9:1'); k++) await sleep(50);
      expect(f!.isBlocked('127.0.0.9:1')).toBe(false);
      f!.reload();
      f!.reload();
      expect(warnings.filter((w) => w.includes('invalid'))).toHaveLength(1);
    } finally {
      f!.stop();
    }
  });
});

describe('UdpTransport with faults', () => {
  it('drops datagrams to and from blocked hosts and delivers again once unblocked', async () => {
    const fa = new MeshFaults();
    const a = await UdpTransport.bind({ host: '127.0.0.1', port: 0, insecure: true, faults: fa });
    const b = await UdpTransport.bind({ host: '127.0.0.2', port: 0, insecure: true });
    try {
      const atB: string[] = [];
      const atA: string[] = [];
      b.onPacket((_from, p) => atB.push(Buffer.from(p).toString()));
      a.onPacket((_from, p) => atA.push(Buffer.from(p).toString()));
      fa.set({ blockHosts: ['127.0.0.2'], lossRate: 0, delayMs: 0 });
      a.send(b.localAddress, Buffer.from('a1'));
      b.send(a.localAddress, Buffer.from('b1'));
      await sleep(150);
      expect(atB).toEqual([]);
      expect(atA).toEqual([]);
      expect(fa.counts.blockedOut).toBe(1);
      expect(fa.counts.blockedIn).toBe(1);
      fa.set({ blockHosts: [], lossRate: 0, delayMs: 60 });
      const t0 = Date.now();
      a.send(b.localAddress, Buffer.from('a2'));
      b.send(a.localAddress, Buffer.from('b2'));
      for (let k = 0; k < 40 && (atB.length === 0 || atA.length === 0); k++) await sleep(10);
      expect(atB).toEqual(['a2']);
      expect(atA).toEqual(['b2']);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(55);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('GossipNode with faults', () => {
  const cluster = new Cluster();
  afterEach(() => cluster.stopAll());

  it(
    'closes the connection to a host that becomes blocked, refuses redials, reconnects once unblocked',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const fa = new MeshFaults();
      const a = await cluster.start({ clusterKey: key, faults: fa });
      const b = await cluster.start({ clusterKey: key, host: '127.0.0.2', advertiseHost: '127.0.0.2' });
      a.connect(b.peerId, b.multiaddr);
      b.connect(a.peerId, a.multiaddr);
      await waitFor(() => a.connectedPeers().includes(b.peerId), 5000, 'a connected to b');
      fa.set({ blockHosts: ['127.0.0.2'], lossRate: 0, delayMs: 0 });
      await waitFor(() => a.connectedPeers().length === 0, 5000, 'a cut from b');
      // b keeps dialling a (inbound to a from 127.0.0.1): refused by peer id, never connected
      await sleep(1500);
      expect(a.connectedPeers()).toEqual([]);
      expect(fa.counts.deniedConnections).toBeGreaterThan(0);
      fa.set({ blockHosts: [], lossRate: 0, delayMs: 0 });
      await waitFor(() => a.connectedPeers().includes(b.peerId), 12_000, 'a reconnected to b');
    },
  );
});
