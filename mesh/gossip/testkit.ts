/** Helpers shared by the mesh/gossip tests (real libp2p nodes on 127.0.0.1). */
import { randomBytes } from 'node:crypto';

import { GossipNode, generateLibp2pKey } from './node.js';
import type { GossipNodeOptions } from './node.js';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

export function clusterKey(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

/** Starts nodes and remembers them so `stopAll()` (afterEach) closes every one. */
export class Cluster {
  readonly nodes: GossipNode[] = [];

  async start(opts: Partial<GossipNodeOptions> = {}): Promise<GossipNode> {
    const node = await GossipNode.start({
      privateKey: opts.privateKey ?? (await generateLibp2pKey()),
      host: '127.0.0.1',
      port: 0,
      advertiseHost: '127.0.0.1',
      ...opts,
    });
    this.nodes.push(node);
    return node;
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.nodes.splice(0).map((n) => n.stop()));
  }
}

/** Every node wants every other one. */
export function fullMesh(nodes: GossipNode[]): void {
  for (const a of nodes) for (const b of nodes) if (a !== b) a.connect(b.peerId, b.multiaddr);
}

const enc = new TextEncoder();

/**
 * Waits until each node has received a probe on `topic` from every other node (subscriptions
 * exchanged, gossipsub ready). The nodes must already subscribe `topic` through `onProbe` taps:
 * this subscribes its own handler, which ignores non-probe payloads.
 */
export async function waitGossipReady(nodes: GossipNode[], topic: string, timeoutMs = 8_000): Promise<void> {
  const seen = new Map<string, Set<string>>();
  for (const n of nodes) {
    const s = new Set<string>();
    seen.set(n.peerId, s);
    n.subscribe(topic, (p, from) => {
      if (p.length > 0 && p[0] === 0xff) s.add(from);
    });
  }
  const deadline = Date.now() + timeoutMs;
  while ([...seen.values()].some((s) => s.size < nodes.length - 1)) {
    if (Date.now() > deadline) throw new Error('gossip mesh not ready');
    for (const n of nodes) n.publish(topic, Uint8Array.of(0xff, ...enc.encode('probe')));
    await sleep(100);
  }
}

export function isProbe(p: Uint8Array): boolean {
  return p.length > 0 && p[0] === 0xff;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
