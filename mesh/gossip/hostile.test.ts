import './polyfill.js';

import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { gossipsub } from '@libp2p/gossipsub';
import type { GossipSub } from '@libp2p/gossipsub';
import { identify } from '@libp2p/identify';
import type { Identify } from '@libp2p/identify';
import type { Libp2p } from '@libp2p/interface';
import { preSharedKey } from '@libp2p/pnet';
import { tcp } from '@libp2p/tcp';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import { afterEach, describe, expect, it } from 'vitest';

import { BATCH_VERSION, MAX_MESSAGE_BYTES, packBatches } from './framing.js';
import { pnetSwarmKey } from './node.js';
import { Cluster, clusterKey, sleep, waitFor } from './testkit.js';

const TOPIC = 'smg/test/1';

/** A plain libp2p + gossipsub node that can put arbitrary bytes on a topic. */
async function rawPeer(key: Uint8Array): Promise<Libp2p<{ identify: Identify; pubsub: GossipSub }>> {
  return createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: preSharedKey({ psk: pnetSwarmKey(key) }),
    connectionManager: { inboundConnectionThreshold: 1_000 },
    services: {
      identify: identify(),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, fallbackToFloodsub: false }),
    },
  });
}

describe('hostile gossip input', () => {
  const cluster = new Cluster();
  let raw: Libp2p | null = null;
  afterEach(async () => {
    await raw?.stop();
    raw = null;
    await cluster.stopAll();
  });

  it(
    'drops and counts malformed and oversized batches, delivers valid ones',
    { timeout: 20_000 },
    async () => {
      const key = clusterKey();
      const node = await cluster.start({ clusterKey: key });
      const got: string[] = [];
      node.subscribe(TOPIC, (p) => got.push(new TextDecoder().decode(p)));
      const peer = await rawPeer(key);
      raw = peer;
      peer.services.pubsub.subscribe(TOPIC);
      await peer.dial(multiaddr(node.multiaddr));
      await waitFor(
        () => peer.services.pubsub.getSubscribers(TOPIC).some((p) => p.toString() === node.peerId),
        5_000,
        'subscription exchange',
      );

      const garbage = [
        new Uint8Array(0),
        Uint8Array.of(0x02, 0x01, 0x41), // unknown version
        Uint8Array.of(BATCH_VERSION, 0x7f, 0x41), // record longer than the message
        Uint8Array.of(BATCH_VERSION, 0xff, 0xff, 0xff, 0xff), // over-long length prefix
        Uint8Array.of(0x03, ...new Uint8Array(999).map(() => Math.floor(Math.random() * 256))),
      ];
      for (const g of garbage) await peer.services.pubsub.publish(TOPIC, g);
      const oversized = new Uint8Array(MAX_MESSAGE_BYTES + 100);
      oversized.set(packBatches([new Uint8Array(10)])[0]);
      await peer.services.pubsub.publish(TOPIC, oversized);
      await peer.services.pubsub.publish(TOPIC, packBatches([new TextEncoder().encode('valid')])[0]);

      await waitFor(() => got.length === 1, 3_000, 'the valid batch');
      await sleep(100);
      expect(got).toEqual(['valid']);
      const s = node.stats();
      // the random 1000 bytes could by chance start with 0x01 and still be malformed: all 5 count
      expect(s.dropped.malformed).toBe(garbage.length);
      expect(s.dropped.oversized).toBe(1);
      expect(s.topics[TOPIC].messagesIn).toBe(1);
      // the node survived and still answers
      expect(node.connectedPeers()).toEqual([peer.peerId.toString()]);
    },
  );
});
