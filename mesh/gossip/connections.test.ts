import { afterEach, describe, expect, it } from 'vitest';

import { generateLibp2pKey, peerIdOf } from './node.js';
import type { GossipNode } from './node.js';
import { Cluster, clusterKey, fullMesh, isProbe, sleep, waitFor, waitGossipReady } from './testkit.js';

const TOPIC = 'smg/test/1';
const enc = new TextEncoder();

function collect(node: GossipNode, topic = TOPIC): string[] {
  const got: string[] = [];
  node.subscribe(topic, (p, from) => {
    if (!isProbe(p)) got.push(`${from}:${new TextDecoder().decode(p)}`);
  });
  return got;
}

describe('gossip keys', () => {
  it('generateLibp2pKey / peerIdOf are stable and match the started node', async () => {
    const key = await generateLibp2pKey();
    expect(peerIdOf(key)).toBe(peerIdOf(key));
    expect(peerIdOf(key)).toMatch(/^12D3KooW/);
    expect(peerIdOf(await generateLibp2pKey())).not.toBe(peerIdOf(key));
  });
});

describe('gossip connections', () => {
  const cluster = new Cluster();
  afterEach(() => cluster.stopAll());

  it('connect() ignores (logs and counts) bad peer ids and addresses instead of throwing', async () => {
    const a = await cluster.start({ clusterKey: clusterKey() });
    const other = peerIdOf(await generateLibp2pKey());
    a.connect('not-a-peer-id', '/ip4/127.0.0.1/tcp/1');
    a.connect(other, 'garbage');
    a.connect(other, `/ip4/127.0.0.1/tcp/1/p2p/${a.peerId}`); // names another peer
    expect(a.stats().dials.rejected).toBe(3);
    expect(a.stats().peersWanted).toBe(0);
  });

  it('a node with another cluster key cannot connect and receives nothing', { timeout: 20_000 }, async () => {
    const key = clusterKey();
    const a = await cluster.start({ clusterKey: key });
    const b = await cluster.start({ clusterKey: key });
    const intruder = await cluster.start({ clusterKey: clusterKey() });
    const gotIntruder = collect(intruder);
    const gotA = collect(a);
    fullMesh([a, b]);
    // both directions: the intruder dials in, and a keyed node dials the intruder
    intruder.connect(a.peerId, a.multiaddr);
    b.connect(intruder.peerId, intruder.multiaddr);
    await waitFor(() => a.connectedPeers().length === 1, 5_000, 'a–b connection');
    await waitGossipReady([a, b], TOPIC);
    await sleep(1_500);
    expect(intruder.connectedPeers()).toEqual([]);
    expect(a.connectedPeers()).toEqual([b.peerId]);
    expect(b.connectedPeers()).toEqual([a.peerId]);
    // a mismatched PSK turns the handshake into noise: the dial fails (reset) or hangs until its timeout
    expect(intruder.stats().dials.attempts).toBeGreaterThan(0);
    expect(b.stats().dials.attempts).toBeGreaterThan(0);
    a.publish(TOPIC, enc.encode('secret'));
    intruder.publish(TOPIC, enc.encode('forged'));
    await sleep(300);
    expect(gotIntruder).toEqual([]);
    expect(gotA.filter((m) => m.endsWith('forged'))).toEqual([]);
  });

  it(
    'an insecure (keyless) node cannot connect to keyed nodes, either direction',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const a = await cluster.start({ clusterKey: key });
      const open1 = await cluster.start({});
      const open2 = await cluster.start({});
      const gotOpen = collect(open1);
      open1.connect(a.peerId, a.multiaddr);
      a.connect(open1.peerId, open1.multiaddr);
      // two keyless nodes do form a (non-private) network
      fullMesh([open1, open2]);
      await waitFor(() => open1.connectedPeers().length === 1, 5_000, 'keyless pair');
      await sleep(1_500);
      expect(a.connectedPeers()).toEqual([]);
      expect(open1.connectedPeers()).toEqual([open2.peerId]);
      a.publish(TOPIC, enc.encode('secret'));
      await sleep(300);
      expect(gotOpen).toEqual([]);
    },
  );

  it(
    'hangUp stops traffic and re-dialling, even if the other side still wants us',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const a = await cluster.start({ clusterKey: key });
      const b = await cluster.start({ clusterKey: key });
      fullMesh([a, b]);
      await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');
      await waitGossipReady([a, b], TOPIC);
      const gotA = collect(a);
      const disconnects: string[] = [];
      a.onPeerDisconnected((p) => disconnects.push(p));
      b.publish(TOPIC, enc.encode('before'));
      await waitFor(() => gotA.length === 1, 3_000, 'before');

      a.hangUp(b.peerId);
      await waitFor(
        () => a.connectedPeers().length === 0 && b.connectedPeers().length === 0,
        3_000,
        'hang-up',
      );
      const dialsA = a.stats().dials.attempts;
      const dialsB = b.stats().dials.attempts;
      await sleep(2_000); // b keeps re-dialling a (it still wants a); a refuses it after the handshake
      expect(a.connectedPeers()).toEqual([]);
      expect(a.stats().dials.attempts).toBe(dialsA);
      expect(a.stats().peersWanted).toBe(0);
      // b backs off (250 ms, 500 ms, 1 s, ...) instead of re-dialling in a tight loop
      expect(b.stats().dials.attempts - dialsB).toBeGreaterThan(0);
      expect(b.stats().dials.attempts - dialsB).toBeLessThanOrEqual(6);
      b.publish(TOPIC, enc.encode('after'));
      await sleep(300);
      expect(gotA.map((m) => m.split(':')[1])).toEqual(['before']);
      expect(disconnects).toEqual([]); // an intended hang-up is not "unexpected"

      // wanting it again lifts the refusal
      a.connect(b.peerId, b.multiaddr);
      await waitFor(() => a.connectedPeers().length === 1, 5_000, 'reconnection');
    },
  );

  it(
    're-dials a wanted peer restarted on the same port and key; onPeerDisconnected fires',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const a = await cluster.start({ clusterKey: key });
      const bKey = await generateLibp2pKey();
      let b = await cluster.start({ clusterKey: key, privateKey: bKey });
      const port = Number(b.multiaddr.split('/')[4]);
      const disconnects: string[] = [];
      a.onPeerDisconnected((p) => disconnects.push(p));
      a.connect(b.peerId, b.multiaddr); // only a wants b: b never dials a
      await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');

      await b.stop();
      await waitFor(() => disconnects.length === 1, 3_000, 'onPeerDisconnected');
      expect(disconnects).toEqual([b.peerId]);
      expect(a.connectedPeers()).toEqual([]);
      await sleep(700); // a few failed re-dials while b is down

      b = await cluster.start({ clusterKey: key, privateKey: bKey, port });
      expect(b.peerId).toBe(peerIdOf(bKey));
      const t0 = Date.now();
      await waitFor(() => a.connectedPeers().length === 1, 12_000, 're-dial');
      console.log(
        `[gossip reconnect] re-dialled the restarted peer ${Date.now() - t0} ms after it came back`,
      );
      const gotB = collect(b);
      await waitGossipReady([a, b], TOPIC);
      a.publish(TOPIC, enc.encode('welcome back'));
      await waitFor(() => gotB.some((m) => m.endsWith('welcome back')), 3_000, 'delivery after restart');
      expect(a.stats().dials.failures).toBeGreaterThan(0);
    },
  );

  it('stop() is idempotent and flushes queued publishes best-effort', { timeout: 20_000 }, async () => {
    const key = clusterKey();
    const a = await cluster.start({ clusterKey: key, batchMs: 1_000 });
    const b = await cluster.start({ clusterKey: key });
    fullMesh([a, b]);
    await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');
    await waitGossipReady([a, b], TOPIC);
    await sleep(1_100);
    const gotB = collect(b);
    a.publish(TOPIC, enc.encode('last words'));
    await Promise.all([a.stop(), a.stop()]);
    await a.stop();
    await waitFor(() => gotB.length === 1, 3_000, 'flushed message');
    expect(a.stats().peersConnected).toBe(0);
  });
});
