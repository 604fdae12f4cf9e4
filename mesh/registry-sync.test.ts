import { describe, expect, it } from 'vitest';
import { Replica } from '../src/state/replica.js';
import { RegistryDoc, actorIdFor } from '../src/state/registry-doc.js';
import { testWorkerSpec } from '../src/testing/worker-spec.js';
import type { Channel } from './gossip/node.js';
import { answerRegistrySync, runRegistrySync } from './registry-sync.js';

/** two connected in-memory channels (what a libp2p stream pair gives the sync code) */
function channelPair(): [Channel, Channel] {
  const make = (
    inbox: Uint8Array[],
    waiters: ((f: Uint8Array | null) => void)[],
    peerInbox: Uint8Array[],
    peerWaiters: ((f: Uint8Array | null) => void)[],
    state: { closed: boolean },
  ): Channel => ({
    async send(frame) {
      if (state.closed) throw new Error('closed');
      const w = peerWaiters.shift();
      if (w) w(frame);
      else peerInbox.push(frame);
    },
    receive() {
      const f = inbox.shift();
      if (f) return Promise.resolve(f);
      if (state.closed) return Promise.resolve(null);
      return new Promise((r) => waiters.push(r));
    },
    async close() {
      state.closed = true;
      for (const w of [...waiters.splice(0), ...peerWaiters.splice(0)]) w(null);
    },
    abort() {
      state.closed = true;
    },
  });
  const aIn: Uint8Array[] = [];
  const bIn: Uint8Array[] = [];
  const aW: ((f: Uint8Array | null) => void)[] = [];
  const bW: ((f: Uint8Array | null) => void)[] = [];
  const state = { closed: false };
  return [make(aIn, aW, bIn, bW, state), make(bIn, bW, aIn, aW, state)];
}

const spec = (url: string) => testWorkerSpec(url);

function replica(node: string): Replica {
  return new Replica({ nodeId: node, registryDoc: RegistryDoc.create(actorIdFor(node, 1)) });
}

describe('registry anti-entropy session', () => {
  it('two peers that wrote different things converge in one session, and the changes are reported as remote', async () => {
    const a = replica('a');
    const b = replica('b');
    a.writeRegistry((d) => d.upsertWorker('w1', spec('http://a:1')));
    a.writeRegistry((d) => d.setConfig('k', '01'));
    b.writeRegistry((d) => d.upsertWorker('w2', spec('http://b:1')));
    b.writeRegistry((d) => d.removeWorker('w0'));
    const reported: string[] = [];
    b.onRegistryChanges((c, source) => reported.push(`${source}:${c.length}`));
    const [ca, cb] = channelPair();
    const [ra] = await Promise.all([runRegistrySync(a, 'b', ca), answerRegistrySync(b, 'a', cb)]);
    expect(ra.rounds).toBeLessThan(6);
    expect(a.registry.list().map((w) => w.url)).toEqual(['http://a:1', 'http://b:1']);
    expect(b.registry.list().map((w) => w.url)).toEqual(['http://a:1', 'http://b:1']);
    expect(b.doc.config().get('k')).toBe('01');
    expect(a.doc.isRemoved('w0')).toBe(true);
    expect(a.doc.heads().sort()).toEqual(b.doc.heads().sort());
    expect(reported).toEqual(['remote:2']);
    // a second session finds nothing to do
    const [c2a, c2b] = channelPair();
    const [again] = await Promise.all([runRegistrySync(a, 'b', c2a), answerRegistrySync(b, 'a', c2b)]);
    expect(again.changed).toBe(false);
  });

  it('a malformed frame fails the session and leaves the document intact', async () => {
    const b = replica('b');
    b.writeRegistry((d) => d.upsertWorker('w2', spec('http://b:1')));
    const heads = b.doc.heads();
    const [ca, cb] = channelPair();
    const answering = answerRegistrySync(b, 'x', cb);
    await ca.send(new Uint8Array([0x42, 1, 2, 3, 4, 5]));
    await expect(answering).rejects.toThrow(/sync message/);
    expect(b.doc.heads()).toEqual(heads);
    expect(b.registry.list()).toHaveLength(1);
  });

  it('a peer that closes mid-session fails the initiator without damage', async () => {
    const a = replica('a');
    a.writeRegistry((d) => d.upsertWorker('w1', spec('http://a:1')));
    const [ca, cb] = channelPair();
    const run = runRegistrySync(a, 'b', ca);
    await cb.receive();
    await cb.close();
    await expect(run).rejects.toThrow(/closed/);
    expect(a.registry.list()).toHaveLength(1);
  });
});
