import { afterEach, describe, expect, it } from 'vitest';

import { MAX_PAYLOAD_BYTES } from './node.js';
import type { GossipNode } from './node.js';
import {
  Cluster,
  clusterKey,
  fullMesh,
  isProbe,
  percentile,
  sleep,
  waitFor,
  waitGossipReady,
} from './testkit.js';

const TOPIC = 'smg/test/1';
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Publishes `count` timestamped payloads from random nodes, `gapMs` apart; returns latencies (ms). */
async function measureLatency(nodes: GossipNode[], count: number, gapMs: number): Promise<number[]> {
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const expected = count * (nodes.length - 1);
  for (const n of nodes) {
    n.subscribe(TOPIC, (p) => {
      if (isProbe(p)) return;
      const t = sentAt.get(dec.decode(p));
      if (t !== undefined) latencies.push(performance.now() - t);
    });
  }
  for (let i = 0; i < count; i++) {
    const id = `m${i}`;
    sentAt.set(id, performance.now());
    nodes[i % nodes.length].publish(TOPIC, enc.encode(id));
    await sleep(gapMs);
  }
  await waitFor(() => latencies.length >= expected, 5_000, `${expected} deliveries`);
  return latencies;
}

function report(label: string, lat: number[]): void {
  const f = (v: number): string => v.toFixed(1);
  console.log(
    `[gossip latency] ${label}: n=${lat.length} p50=${f(percentile(lat, 50))} ms ` +
      `p99=${f(percentile(lat, 99))} ms max=${f(Math.max(...lat))} ms`,
  );
}

describe('gossip pub/sub', () => {
  const cluster = new Cluster();
  afterEach(() => cluster.stopAll());

  it(
    '3 keyed nodes: a publish on one reaches both others (latency printed)',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const nodes = [await cluster.start({ clusterKey: key }), await cluster.start({ clusterKey: key })];
      nodes.push(await cluster.start({ clusterKey: key }));
      fullMesh(nodes);
      await waitFor(() => nodes.every((n) => n.connectedPeers().length === 2), 5_000, 'full mesh');
      await waitGossipReady(nodes, TOPIC);

      const got = new Map<string, string[]>();
      for (const n of nodes) {
        got.set(n.peerId, []);
        n.subscribe(TOPIC, (p, from) => {
          if (!isProbe(p)) got.get(n.peerId)!.push(`${from}:${dec.decode(p)}`);
        });
      }
      nodes[0].publish(TOPIC, enc.encode('hello'));
      await waitFor(
        () => got.get(nodes[1].peerId)!.length + got.get(nodes[2].peerId)!.length === 2,
        3_000,
        'hello',
      );
      expect(got.get(nodes[1].peerId)).toEqual([`${nodes[0].peerId}:hello`]);
      expect(got.get(nodes[2].peerId)).toEqual([`${nodes[0].peerId}:hello`]);
      expect(got.get(nodes[0].peerId)).toEqual([]); // emitSelf false

      report('3 nodes, batchMs 50 (publish() → handler)', await measureLatency(nodes, 200, 5));
    },
  );

  it('8-node full mesh: everyone receives promptly (latency printed)', { timeout: 20_000 }, async () => {
    const key = clusterKey();
    const nodes = await Promise.all(
      Array.from({ length: 8 }, () => cluster.start({ clusterKey: key, batchMs: 10 })),
    );
    fullMesh(nodes);
    await waitFor(() => nodes.every((n) => n.connectedPeers().length === 7), 10_000, 'full mesh');
    await waitGossipReady(nodes, TOPIC);
    report('8 nodes, batchMs 10 (publish() → handler)', await measureLatency(nodes, 160, 10));
  });

  it(
    'batches 500 small publishes into a few messages, in order per sender',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const nodes = [await cluster.start({ clusterKey: key }), await cluster.start({ clusterKey: key })];
      nodes.push(await cluster.start({ clusterKey: key }));
      fullMesh(nodes);
      await waitFor(() => nodes.every((n) => n.connectedPeers().length === 2), 5_000, 'full mesh');
      await waitGossipReady(nodes, TOPIC);

      const received: Record<string, number[]> = {};
      nodes[2].subscribe(TOPIC, (p, from) => {
        if (isProbe(p)) return;
        (received[from] ??= []).push(Number(dec.decode(p)));
      });
      await sleep(150); // let probe batches drain
      const before = nodes[2].stats().topics[TOPIC].messagesIn;
      const t0 = performance.now();
      for (let i = 0; i < 500; i++) {
        nodes[0].publish(TOPIC, enc.encode(String(i)));
        nodes[1].publish(TOPIC, enc.encode(String(i)));
      }
      expect(performance.now() - t0).toBeLessThan(50); // all queued within one batch window
      await waitFor(
        () =>
          (received[nodes[0].peerId]?.length ?? 0) === 500 &&
          (received[nodes[1].peerId]?.length ?? 0) === 500,
        5_000,
        '1000 payloads',
      );
      const messages = nodes[2].stats().topics[TOPIC].messagesIn - before;
      console.log(`[gossip batching] 2 × 500 publishes arrived in ${messages} gossipsub messages`);
      expect(messages).toBeLessThanOrEqual(4);
      const inOrder = Array.from({ length: 500 }, (_, i) => i);
      expect(received[nodes[0].peerId]).toEqual(inOrder);
      expect(received[nodes[1].peerId]).toEqual(inOrder);
      expect(nodes[0].stats().topics[TOPIC].payloadsOut).toBeGreaterThanOrEqual(500);
    },
  );

  it(
    'a handler that throws is caught and counted; other handlers still run',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const [a, b] = [await cluster.start({ clusterKey: key }), await cluster.start({ clusterKey: key })];
      fullMesh([a, b]);
      await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');
      await waitGossipReady([a, b], TOPIC);
      const ok: string[] = [];
      b.subscribe(TOPIC, (p) => {
        if (!isProbe(p)) throw new Error('boom');
      });
      b.subscribe(TOPIC, (p) => {
        if (!isProbe(p)) ok.push(dec.decode(p));
      });
      a.publish(TOPIC, enc.encode('x'));
      a.publish(TOPIC, enc.encode('y'));
      await waitFor(() => ok.length === 2, 3_000, 'delivery');
      expect(ok).toEqual(['x', 'y']);
      expect(b.stats().dropped.handler_error).toBe(2);
    },
  );

  it(
    'rejects a payload over the limit at publish time; a maximal one arrives',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const [a, b] = [await cluster.start({ clusterKey: key }), await cluster.start({ clusterKey: key })];
      expect(() => a.publish(TOPIC, new Uint8Array(64 * 1024 + 1))).toThrow(/exceeds the limit/);
      expect(() => a.publish(TOPIC, new Uint8Array(MAX_PAYLOAD_BYTES + 1))).toThrow(/exceeds the limit/);
      fullMesh([a, b]);
      await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');
      await waitGossipReady([a, b], TOPIC);
      const sizes: number[] = [];
      b.subscribe(TOPIC, (p) => {
        if (!isProbe(p)) sizes.push(p.length);
      });
      a.publish(TOPIC, new Uint8Array(MAX_PAYLOAD_BYTES).fill(1));
      a.publish(TOPIC, new Uint8Array(MAX_PAYLOAD_BYTES).fill(2));
      a.publish(TOPIC, new Uint8Array(10));
      await waitFor(() => sizes.length === 3, 3_000, 'large payloads');
      expect(sizes).toEqual([MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, 10]);
    },
  );
});
