/**
 * The replicated registry document: local writes reach the views, any delivery order of changes
 * converges, remove wins, the sync protocol catches peers up in a bounded number of rounds, the
 * document survives save/load and refuses malformed input without damage.
 */
import * as Automerge from '@automerge/automerge';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  RegistryDoc,
  RegistryDocError,
  actorIdFor,
  parseActorId,
  type RegistryDocDiff,
} from './registry-doc.js';
import { ROOT_KEY_BYTES, SecretSealer } from './secret-sealer.js';
import type { WorkerSpec } from './worker.js';

function spec(url: string, priority = 50, models = ['m1']): WorkerSpec {
  return {
    url,
    models,
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels: { zone: 'a' },
    priority,
    cost: 1,
    api_key: 'sk-test',
    health: {},
    max_connection_attempts: 20,
  };
}

const actor = (node: string, incarnation = 1) => actorIdFor(node, incarnation);

/** everything a peer can observe of a doc, in canonical form */
function snapshot(d: RegistryDoc) {
  const sorted = <V>(m: ReadonlyMap<string, V>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    workers: sorted(d.workers()),
    removed: [...d.removed()].sort(),
    policies: sorted(d.policies()),
    config: sorted(d.config()),
    heads: [...d.heads()].sort(),
  };
}

/** runs the sync protocol between all pairs until nobody has anything to send; returns the rounds */
function syncAll(docs: RegistryDoc[], names: string[], maxRounds = 50): number {
  for (let round = 1; round <= maxRounds; round++) {
    let sent = false;
    for (let i = 0; i < docs.length; i++) {
      for (let j = 0; j < docs.length; j++) {
        if (i === j) continue;
        const msg = docs[i].generateSyncMessage(names[j]);
        if (msg) {
          sent = true;
          docs[j].receiveSyncMessage(names[i], msg);
        }
      }
    }
    if (!sent) return round - 1;
  }
  throw new Error(`sync did not settle in ${maxRounds} rounds`);
}

describe('actor ids', () => {
  it('encodes node id and incarnation, and every incarnation differs', () => {
    const a1 = actorIdFor('node-a', 1);
    const a2 = actorIdFor('node-a', 2);
    expect(a1).not.toBe(a2);
    expect(parseActorId(a1)).toEqual({ nodeId: 'node-a', incarnation: 1 });
    expect(parseActorId(actorIdFor('nœud-é', 0xffffffff))).toEqual({
      nodeId: 'nœud-é',
      incarnation: 0xffffffff,
    });
    expect(() => actorIdFor('', 1)).toThrow(RegistryDocError);
    expect(() => actorIdFor('n', -1)).toThrow(RegistryDocError);
    expect(() => actorIdFor('n', 1.5)).toThrow(RegistryDocError);
    expect(() => RegistryDoc.create('xyz')).toThrow(RegistryDocError);
    expect(() => RegistryDoc.create('abc')).toThrow(RegistryDocError);
  });

  it('a restarted node (new incarnation) never emits a duplicate (actor, seq), even after losing changes', () => {
    // incarnation 1 writes three changes, only the first reached the store before a crash
    const first = RegistryDoc.create(actor('n1', 1));
    const persisted = first.upsertWorker('w1', spec('http://a'));
    const lost = [...first.upsertWorker('w2', spec('http://b')), ...first.setConfig('k', 'v')];
    const restarted = RegistryDoc.load(actor('n1', 2), undefined, persisted);
    const fresh = [...restarted.upsertWorker('w3', spec('http://c')), ...restarted.setConfig('k', 'v2')];
    const ids = [...persisted, ...lost, ...fresh].map((c) => {
      const d = Automerge.decodeChange(c);
      return `${d.actor}:${d.seq}`;
    });
    expect(new Set(ids).size).toBe(ids.length);
    // a peer that saw the lost changes still accepts the new incarnation's changes and converges
    const peer = RegistryDoc.create(actor('n2'));
    peer.applyChanges([...persisted, ...lost]);
    expect(peer.applyChanges(fresh)).toEqual({ changed: true });
    restarted.applyChanges(lost);
    expect(snapshot(peer)).toEqual(snapshot(restarted));
    expect(peer.workers().size).toBe(3);
  });
});

describe('local writes', () => {
  it('are visible in the views and return their change bytes', () => {
    const d = RegistryDoc.create(actor('n1'), { now: () => 1234 });
    const diffs: RegistryDocDiff[] = [];
    d.onChange((diff) => diffs.push(diff));
    const c1 = d.upsertWorker('w1', spec('http://a'));
    expect(c1).toHaveLength(1);
    expect(d.workers().get('w1')).toEqual(spec('http://a'));
    expect(Object.isFrozen(d.workers().get('w1'))).toBe(true);
    expect(d.upsertWorker('w1', spec('http://a'))).toEqual([]); // identical spec: no change
    d.setPolicy('m1', 'cache_aware', { balance_abs_threshold: 32, strict: true });
    expect(d.policies().get('m1')).toEqual({
      policy: 'cache_aware',
      params: { balance_abs_threshold: 32, strict: true },
      updatedAt: 1234,
    });
    d.setConfig('routing.default', 'round_robin');
    expect(d.config().get('routing.default')).toBe('round_robin');
    expect(d.deleteConfig('routing.default')).toHaveLength(1);
    expect(d.deleteConfig('routing.default')).toEqual([]);
    expect(d.config().size).toBe(0);
    d.removeWorker('w1');
    expect(d.workers().has('w1')).toBe(false);
    expect(d.isRemoved('w1')).toBe(true);
    expect(d.removeWorker('w1')).toEqual([]);
    expect(() => d.upsertWorker('w1', spec('http://a'))).toThrow(RegistryDocError);
    expect(() => d.upsertWorker('w9', { ...spec('http://a'), url: 7 } as unknown as WorkerSpec)).toThrow(
      RegistryDocError,
    );
    expect(() => d.upsertWorker('', spec('http://a'))).toThrow(RegistryDocError);
    expect(diffs).toEqual([
      { upserted: ['w1'], removed: [], policiesChanged: false, configChanged: false },
      { upserted: [], removed: [], policiesChanged: true, configChanged: false },
      { upserted: [], removed: [], policiesChanged: false, configChanged: true },
      { upserted: [], removed: [], policiesChanged: false, configChanged: true },
      { upserted: [], removed: ['w1'], policiesChanged: false, configChanged: false },
    ]);
  });

  it('upserts in bulk in as few changes as fit a gossip message each, all or nothing', () => {
    const d = RegistryDoc.create(actor('n1'));
    const diffs: RegistryDocDiff[] = [];
    d.onChange((diff) => diffs.push(diff));
    const batch = Array.from({ length: 1000 }, (_, i) => [`w${i}`, spec(`http://h${i}:8000`)] as const);
    const changes = d.upsertWorkers(batch);
    // ~1000 specs of ~240 B: a handful of changes, each under the 64 KiB a gossip message carries
    expect(changes.length).toBeGreaterThan(1);
    expect(changes.length).toBeLessThan(20);
    for (const c of changes) expect(c.length).toBeLessThan(60 * 1024);
    expect(d.workers().size).toBe(1000);
    expect(diffs.flatMap((x) => x.upserted).sort()).toEqual(batch.map(([id]) => id).sort());
    // a peer that applies the changes sees the same workers
    const peer = RegistryDoc.create(actor('n2'));
    peer.applyChanges(changes);
    expect(snapshot(peer).workers).toEqual(snapshot(d).workers);
    // unchanged specs write nothing; one removed id refuses the whole batch
    expect(d.upsertWorkers(batch.slice(0, 10))).toEqual([]);
    d.removeWorker('w5');
    expect(() =>
      d.upsertWorkers([
        ['w1', spec('http://other:1')],
        ['w5', spec('http://x:1')],
      ]),
    ).toThrow(RegistryDocError);
    expect(d.workers().get('w1')?.url).toBe('http://h1:8000');
  });

  it('keeps unchanged view objects across rebuilds and replaces the maps', () => {
    const d = RegistryDoc.create(actor('n1'));
    d.upsertWorker('w1', spec('http://a'));
    const before = d.workers();
    const w1 = before.get('w1');
    d.upsertWorker('w2', spec('http://b'));
    expect(d.workers()).not.toBe(before);
    expect(d.workers().get('w1')).toBe(w1);
    expect(before.has('w2')).toBe(false);
  });

  it('tombstones an id it never saw, and tells listeners', () => {
    const a = RegistryDoc.create(actor('n1'));
    const diffs: RegistryDocDiff[] = [];
    a.onChange((diff) => diffs.push(diff));
    a.removeWorker('ghost');
    expect(a.isRemoved('ghost')).toBe(true);
    expect(diffs).toEqual([
      { upserted: [], removed: ['ghost'], policiesChanged: false, configChanged: false },
    ]);
  });
});

describe('convergence by change exchange', () => {
  it('concurrent upserts of one id converge to one winner', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    const ca = a.upsertWorker('w1', spec('http://a', 1));
    const cb = b.upsertWorker('w1', spec('http://a', 2));
    a.applyChanges(cb);
    b.applyChanges(ca);
    expect(snapshot(a)).toEqual(snapshot(b));
    expect([1, 2]).toContain(a.workers().get('w1')?.priority);
  });

  it('remove wins over a concurrent upsert, on every peer', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    const c = RegistryDoc.create(actor('n3'));
    const base = a.upsertWorker('w1', spec('http://a', 1));
    b.applyChanges(base);
    c.applyChanges(base);
    const up = b.upsertWorker('w1', spec('http://a', 9));
    const rm = c.removeWorker('w1');
    for (const d of [a, b, c]) {
      d.applyChanges(rm);
      d.applyChanges(up);
      expect(d.workers().has('w1')).toBe(false);
      expect(d.isRemoved('w1')).toBe(true);
    }
    expect(snapshot(a)).toEqual(snapshot(b));
    expect(snapshot(b)).toEqual(snapshot(c));
  });

  it('concurrent policy writes converge', () => {
    const a = RegistryDoc.create(actor('n1'), { now: () => 1 });
    const b = RegistryDoc.create(actor('n2'), { now: () => 2 });
    const ca = a.setPolicy('m1', 'round_robin');
    const cb = b.setPolicy('m1', 'cache_aware', { threshold: 0.5 });
    a.applyChanges(cb);
    b.applyChanges(ca);
    expect(a.policies()).toEqual(b.policies());
    expect(a.policies().size).toBe(1);
  });

  it('changes arriving before their dependencies wait, then apply', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    const c1 = a.upsertWorker('w1', spec('http://a'));
    const c2 = a.upsertWorker('w1', spec('http://a', 7));
    expect(b.applyChanges(c2)).toEqual({ changed: false });
    expect(b.workers().size).toBe(0);
    expect(b.applyChanges(c1)).toEqual({ changed: true });
    expect(b.workers().get('w1')?.priority).toBe(7);
    expect(b.applyChanges([...c1, ...c2])).toEqual({ changed: false });
  });

  type Op =
    | { kind: 'upsert'; at: number; id: string; priority: number }
    | { kind: 'remove'; at: number; id: string }
    | { kind: 'policy'; at: number; model: string; policy: string }
    | { kind: 'config'; at: number; key: string; value: string | null }
    | { kind: 'deliver'; from: number; to: number; seed: number };

  const ids = fc.constantFrom('w1', 'w2', 'w3');
  const at = fc.integer({ min: 0, max: 2 });
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('upsert' as const),
      at,
      id: ids,
      priority: fc.integer({ min: 0, max: 9 }),
    }),
    fc.record({ kind: fc.constant('remove' as const), at, id: ids }),
    fc.record({
      kind: fc.constant('policy' as const),
      at,
      model: fc.constantFrom('m1', 'm2'),
      policy: fc.constantFrom('random', 'round_robin', 'cache_aware'),
    }),
    fc.record({
      kind: fc.constant('config' as const),
      at,
      key: fc.constantFrom('a', 'b'),
      value: fc.option(fc.constantFrom('x', 'y'), { nil: null }),
    }),
    fc.record({
      kind: fc.constant('deliver' as const),
      from: at,
      to: at,
      seed: fc.integer({ min: 0, max: 1_000_000 }),
    }),
  );

  /** a deterministic shuffle with duplicates */
  function scramble<T>(xs: T[], seed: number): T[] {
    const out = [...xs, ...xs.filter((_, i) => (i + seed) % 3 === 0)];
    let s = seed || 1;
    for (let i = out.length - 1; i > 0; i--) {
      s = (s * 1103515245 + 12345) % 2147483648;
      const j = s % (i + 1);
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }

  it('any interleaving of ops on 3 actors, then a full exchange in any order, gives identical docs', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 30 }), fc.integer({ min: 0, max: 1_000_000 }), (ops, seed) => {
        const docs = [0, 1, 2].map((i) => RegistryDoc.create(actor(`n${i}`), { now: () => i }));
        const logs: Uint8Array[][] = [[], [], []];
        for (const op of ops) {
          if (op.kind === 'deliver') {
            docs[op.to].applyChanges(scramble(logs[op.from], op.seed));
            continue;
          }
          const d = docs[op.at];
          let out: Uint8Array[];
          if (op.kind === 'upsert') {
            if (d.isRemoved(op.id)) continue;
            out = d.upsertWorker(op.id, spec(`http://${op.id}`, op.priority));
          } else if (op.kind === 'remove') out = d.removeWorker(op.id);
          else if (op.kind === 'policy') out = d.setPolicy(op.model, op.policy);
          else out = op.value === null ? d.deleteConfig(op.key) : d.setConfig(op.key, op.value);
          logs[op.at].push(...out);
        }
        const all = logs.flat();
        docs.forEach((d, i) => d.applyChanges(scramble(all, seed + i)));
        const s0 = snapshot(docs[0]);
        expect(snapshot(docs[1])).toEqual(s0);
        expect(snapshot(docs[2])).toEqual(s0);
        for (const id of s0.removed) expect(docs[0].workers().has(id)).toBe(false);
      }),
      { numRuns: 60 },
    );
  });

  it('views updated change by change (only the touched keys) equal a full read, and the diffs replay them', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 30 }), fc.integer({ min: 0, max: 1_000_000 }), (ops, seed) => {
        const docs = [0, 1, 2].map((i) => RegistryDoc.create(actor(`n${i}`), { now: () => i }));
        // what a listener of doc 0 rebuilds from the diffs alone
        const mirror = new Map<string, WorkerSpec>();
        docs[0].onChange((diff) => {
          for (const id of diff.upserted) mirror.set(id, docs[0].workers().get(id)!);
          for (const id of diff.removed) mirror.delete(id);
        });
        const logs: Uint8Array[][] = [[], [], []];
        const check = () => {
          const full = RegistryDoc.load(actor('check'), docs[0].save());
          expect(snapshot(docs[0])).toEqual(snapshot(full));
          expect(docs[0].invalidEntries()).toBe(full.invalidEntries());
          expect(new Map([...mirror].sort())).toEqual(new Map([...docs[0].workers()].sort()));
        };
        for (const op of ops) {
          if (op.kind === 'deliver') {
            docs[op.to].applyChanges(scramble(logs[op.from], op.seed));
            if (op.to === 0) check();
            continue;
          }
          const d = docs[op.at];
          let out: Uint8Array[];
          if (op.kind === 'upsert') {
            if (d.isRemoved(op.id)) continue;
            out = d.upsertWorker(op.id, spec(`http://${op.id}`, op.priority));
          } else if (op.kind === 'remove') out = d.removeWorker(op.id);
          else if (op.kind === 'policy') out = d.setPolicy(op.model, op.policy);
          else out = op.value === null ? d.deleteConfig(op.key) : d.setConfig(op.key, op.value);
          logs[op.at].push(...out);
          if (op.at === 0) check();
        }
        docs[0].applyChanges(scramble(logs.flat(), seed));
        check();
      }),
      { numRuns: 40 },
    );
  });
});

describe('sync protocol', () => {
  it('two divergent peers converge in a bounded number of rounds', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    for (let i = 0; i < 20; i++) a.upsertWorker(`a${i}`, spec(`http://a${i}`));
    for (let i = 0; i < 20; i++) b.upsertWorker(`b${i}`, spec(`http://b${i}`));
    b.removeWorker('a3');
    a.setPolicy('m1', 'cache_aware');
    const rounds = syncAll([a, b], ['a', 'b']);
    expect(rounds).toBeLessThanOrEqual(4);
    expect(snapshot(a)).toEqual(snapshot(b));
    expect(a.workers().size).toBe(39);
    // nothing left to say
    expect(a.generateSyncMessage('b')).toBeNull();
    expect(b.generateSyncMessage('a')).toBeNull();
  });

  it('three divergent peers, one of them new and empty, converge', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    const fresh = RegistryDoc.create(actor('n3'));
    const shared = a.upsertWorker('w0', spec('http://w0'));
    b.applyChanges(shared);
    for (let i = 0; i < 50; i++) a.upsertWorker(`a${i}`, spec(`http://a${i}`, i % 10));
    for (let i = 0; i < 50; i++) b.setConfig(`k${i % 5}`, `v${i}`);
    b.removeWorker('w0');
    a.upsertWorker('w0', spec('http://w0', 3)); // concurrent with the removal: removal wins
    const rounds = syncAll([a, b, fresh], ['a', 'b', 'c']);
    expect(rounds).toBeLessThanOrEqual(5);
    expect(snapshot(fresh)).toEqual(snapshot(a));
    expect(snapshot(b)).toEqual(snapshot(a));
    expect(fresh.workers().size).toBe(50);
    expect(fresh.isRemoved('w0')).toBe(true);
  });

  it('keeps converging as writes continue, and a forgotten peer starts over', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    a.upsertWorker('w1', spec('http://a'));
    syncAll([a, b], ['a', 'b']);
    b.setConfig('k', 'v');
    syncAll([a, b], ['a', 'b']);
    expect(a.config().get('k')).toBe('v');
    a.forgetPeer('b');
    b.forgetPeer('a');
    a.setConfig('k', 'w');
    expect(syncAll([a, b], ['a', 'b'])).toBeLessThanOrEqual(3);
    expect(snapshot(a)).toEqual(snapshot(b));
  });

  it('rejects malformed sync messages without damage', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    a.upsertWorker('w1', spec('http://a'));
    b.upsertWorker('w2', spec('http://b'));
    const before = snapshot(b);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        expect(() => b.receiveSyncMessage('a', bytes)).toThrow(RegistryDocError);
      }),
      { numRuns: 100 },
    );
    // corrupted real messages
    const msg = a.generateSyncMessage('b');
    if (!msg) throw new Error('expected a message');
    for (const cut of [1, 5, msg.length >> 1, msg.length - 1]) {
      expect(() => b.receiveSyncMessage('a', msg.subarray(0, cut))).toThrow(RegistryDocError);
    }
    expect(snapshot(b)).toEqual(before);
    a.forgetPeer('b');
    expect(syncAll([a, b], ['a', 'b'])).toBeLessThanOrEqual(4);
    expect(snapshot(a)).toEqual(snapshot(b));
  });
});

describe('corrupted sync messages', () => {
  it('a real message with any byte flipped is rejected or harmless, and the doc still saves and syncs', () => {
    const a = RegistryDoc.create(actor('n1'));
    for (let i = 0; i < 5; i++) a.upsertWorker(`w${i}`, spec(`http://w${i}`));
    // first message of a session: heads and bloom only; the second carries the document to an empty peer
    const probe = RegistryDoc.create(actor('n2'));
    const hello = a.generateSyncMessage('p');
    if (!hello) throw new Error('expected a message');
    probe.receiveSyncMessage('a', hello);
    const reply = probe.generateSyncMessage('a');
    if (!reply) throw new Error('expected a reply');
    a.receiveSyncMessage('p', reply);
    const payload = a.generateSyncMessage('p');
    if (!payload) throw new Error('expected a payload');
    let rejected = 0;
    for (let i = 0; i < payload.length; i += 3) {
      const b = RegistryDoc.create(actor('n3'));
      const bad = payload.slice();
      bad[i] ^= 0x5a;
      try {
        b.receiveSyncMessage('a', bad);
      } catch (err) {
        expect(err).toBeInstanceOf(RegistryDocError);
        rejected++;
      }
      expect(snapshot(RegistryDoc.load(actor('n3', 2), b.save()))).toEqual(snapshot(b));
      b.forgetPeer('a');
      a.forgetPeer('b');
      syncAll([a, b], ['a', 'b']);
      expect(snapshot(b)).toEqual(snapshot(a));
    }
    expect(rejected).toBeGreaterThan(0);
  });
});

describe('persistence', () => {
  it('load(save()) round-trips, and load(snapshot, later changes) catches up', () => {
    const a = RegistryDoc.create(actor('n1'), { now: () => 5 });
    a.upsertWorker('w1', spec('http://a'));
    a.setPolicy('m1', 'random');
    a.setConfig('k', 'v');
    a.removeWorker('gone');
    const snap = a.save();
    const headsAtSnap = a.heads();
    const reloaded = RegistryDoc.load(actor('n1', 2), snap);
    expect(snapshot(reloaded)).toEqual(snapshot(a));

    const later = [...a.upsertWorker('w2', spec('http://b')), ...a.deleteConfig('k')];
    expect(a.getChangesSince(headsAtSnap)).toEqual(later);
    const caughtUp = RegistryDoc.load(actor('n1', 3), snap, [...later].reverse());
    expect(snapshot(caughtUp)).toEqual(snapshot(a));
    // unknown heads: every change (a superset is always safe to apply)
    expect(a.getChangesSince(['00'.repeat(32)]).length).toBeGreaterThan(later.length);
    // a reloaded doc keeps writing under its own actor
    caughtUp.setConfig('x', 'y');
    a.applyChanges(caughtUp.getChangesSince(a.heads()));
    expect(snapshot(caughtUp)).toEqual(snapshot(a));
  });

  it('independently created docs share one genesis, so their root maps merge', () => {
    const a = RegistryDoc.create(actor('n1'));
    const b = RegistryDoc.create(actor('n2'));
    expect(a.heads()).toEqual(b.heads());
    const ca = a.upsertWorker('w1', spec('http://a'));
    const cb = b.upsertWorker('w2', spec('http://b'));
    a.applyChanges(cb);
    b.applyChanges(ca);
    expect([...a.workers().keys()].sort()).toEqual(['w1', 'w2']);
    expect(snapshot(a)).toEqual(snapshot(b));
  });

  it('refuses corrupt and foreign snapshots with a typed error', () => {
    const a = RegistryDoc.create(actor('n1'));
    a.upsertWorker('w1', spec('http://a'));
    const snap = a.save();
    const corrupt = snap.slice();
    corrupt[corrupt.length >> 1] ^= 0xff;
    const codeOf = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return err instanceof RegistryDocError ? err.code : 'untyped';
      }
      return 'none';
    };
    expect(codeOf(() => RegistryDoc.load(actor('n1', 2), corrupt))).toBe('corrupt_snapshot');
    expect(codeOf(() => RegistryDoc.load(actor('n1', 2), new Uint8Array([1, 2, 3])))).toBe(
      'corrupt_snapshot',
    );
    const foreign = Automerge.save(Automerge.from({ todo: ['x'] }));
    expect(codeOf(() => RegistryDoc.load(actor('n1', 2), foreign))).toBe('foreign_document');
    // same root map names, but created without the shared genesis: its maps would shadow ours
    const lookalike = Automerge.save(
      Automerge.from({ workers: {}, removed: {}, policies: {}, config: {} }, { actor: actor('x') }),
    );
    expect(codeOf(() => RegistryDoc.load(actor('n1', 2), lookalike))).toBe('foreign_document');
  });
});

describe('malformed changes', () => {
  it('random bytes are rejected and the doc stays intact', () => {
    const d = RegistryDoc.create(actor('n1'));
    d.upsertWorker('w1', spec('http://a'));
    const good = RegistryDoc.create(actor('n2')).upsertWorker('w2', spec('http://b'));
    const before = snapshot(d);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(() => d.applyChanges([bytes])).toThrow(RegistryDocError);
        // a bad change anywhere in a batch refuses the whole batch
        expect(() => d.applyChanges([...good, bytes])).toThrow(RegistryDocError);
      }),
      { numRuns: 100 },
    );
    expect(snapshot(d)).toEqual(before);
    d.applyChanges(good);
    expect(d.workers().has('w2')).toBe(true);
  });

  it('every single-byte corruption of a real change is rejected (chunk checksum), doc intact', () => {
    const src = RegistryDoc.create(actor('n2'));
    const change = src.upsertWorker('w2', spec('http://b'))[0];
    const d = RegistryDoc.create(actor('n1'));
    d.upsertWorker('w1', spec('http://a'));
    let rejected = 0;
    for (let i = 0; i < change.length; i++) {
      const bad = change.slice();
      bad[i] ^= 0x5a;
      try {
        d.applyChanges([bad]);
      } catch (err) {
        expect(err).toBeInstanceOf(RegistryDocError);
        rejected++;
      }
      // whatever happened, the doc still works: a write and a sync with a clean peer converge
      expect(d.workers().get('w1')?.url).toBe('http://a');
    }
    expect(rejected).toBe(change.length);
    expect(snapshot(RegistryDoc.load(actor('n1', 2), d.save()))).toEqual(snapshot(d));
    d.setConfig('after', 'corruption');
    const peer = RegistryDoc.create(actor('n3'));
    syncAll([d, peer], ['d', 'p']);
    expect(snapshot(peer)).toEqual(snapshot(d));
  });
});

describe('sealed worker keys', () => {
  const sealerOf = (...fills: number[]) =>
    new SecretSealer(
      Buffer.alloc(ROOT_KEY_BYTES, fills[0]),
      fills.slice(1).map((f) => Buffer.alloc(ROOT_KEY_BYTES, f)),
    );
  const keyed = (url: string, apiKey: string | undefined, priority = 50): WorkerSpec => {
    const s: WorkerSpec = { ...spec(url, priority) };
    if (apiKey === undefined) delete s.api_key;
    else s.api_key = apiKey;
    return s;
  };
  const holds = (bytes: Uint8Array[], secret: string) =>
    bytes.some((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).includes(secret));

  it('never holds a worker key in plaintext: document, history, changes, sync messages', () => {
    const d = RegistryDoc.create(actor('n1'), { sealer: sealerOf(1) });
    const changes = [
      ...d.upsertWorker('w1', keyed('http://a', 'sk-first-worker-key')),
      ...d.upsertWorker('w1', keyed('http://a', 'sk-second-worker-key')),
    ];
    expect(d.workers().get('w1')?.api_key).toBe('sk-second-worker-key');
    const fresh = RegistryDoc.create(actor('n2'), { sealer: sealerOf(1) });
    const sync = d.generateSyncMessage('fresh');
    expect(sync).not.toBeNull();
    fresh.receiveSyncMessage('n1', sync!);
    const wire = [
      ...changes,
      d.save(),
      sync!,
      ...d.getChangesSince([]),
      ...fresh.getChangesSince([]),
      fresh.save(),
    ];
    for (const secret of ['sk-first-worker-key', 'sk-second-worker-key'])
      expect(holds(wire, secret)).toBe(false);
    // the control: the rest of the spec is there in clear, so the search above can find text
    expect(holds(changes, 'http://a')).toBe(true);
    // a peer with the same key reads it back
    syncAll([d, fresh], ['n1', 'n2']);
    expect(fresh.workers().get('w1')?.api_key).toBe('sk-second-worker-key');
    expect(
      RegistryDoc.load(actor('n1', 2), d.save(), [], { sealer: sealerOf(1) })
        .workers()
        .get('w1'),
    ).toEqual(d.workers().get('w1'));
  });

  it('is idempotent: the same spec again writes nothing, though every sealing differs', () => {
    const d = RegistryDoc.create(actor('n1'), { sealer: sealerOf(1) });
    expect(d.upsertWorker('w1', keyed('http://a', 'sk-1'))).toHaveLength(1);
    expect(d.upsertWorker('w1', keyed('http://a', 'sk-1'))).toEqual([]);
    expect(d.upsertWorker('w1', keyed('http://a', 'sk-2'))).toHaveLength(1);
    expect(d.upsertWorker('w1', keyed('http://a', undefined))).toHaveLength(1);
    expect(d.workers().get('w1')?.api_key).toBeUndefined();
  });

  it('a node without the key shows no api_key, reports it, and keeps the sealed key when it rewrites the spec', () => {
    const a = RegistryDoc.create(actor('a'), { sealer: sealerOf(1) });
    const b = RegistryDoc.create(actor('b'), { sealer: sealerOf(2) });
    b.applyChanges(a.upsertWorker('w1', keyed('http://a', 'sk-only-a-reads')));
    expect(b.workers().get('w1')?.url).toBe('http://a');
    expect(b.workers().get('w1')?.api_key).toBeUndefined();
    expect([...b.unreadableWorkerKeys()]).toEqual([['w1', 'unknown_key']]);
    expect(a.unreadableWorkerKeys().size).toBe(0);
    // b changes the priority (a PATCH: its view, which has no key): the key survives for a
    const change = b.upsertWorker('w1', { ...b.workers().get('w1')!, priority: 7 });
    expect(change).toHaveLength(1);
    a.applyChanges(change);
    expect(a.workers().get('w1')).toMatchObject({ priority: 7, api_key: 'sk-only-a-reads' });
    // a key b writes is its own to seal
    a.applyChanges(b.upsertWorker('w1', keyed('http://a', 'sk-from-b', 7)));
    expect(a.workers().get('w1')?.api_key).toBeUndefined();
    expect([...a.unreadableWorkerKeys()]).toEqual([['w1', 'unknown_key']]);
  });

  it('opens plaintext keys of older versions and seals them on demand, without moving the views', () => {
    const d = RegistryDoc.create(actor('n1'), { sealer: sealerOf(1) });
    // what an older version wrote: the spec's JSON with its key as it is
    const legacy = Automerge.change(
      Automerge.load<{ workers: Record<string, unknown> }>(d.save(), { actor: actor('old') }),
      (doc) => {
        doc.workers.w1 = new Automerge.ImmutableString(
          JSON.stringify(keyed('http://a', 'sk-legacy-plaintext')),
        );
      },
    );
    d.applyChanges(Automerge.getChanges(Automerge.load(d.save()), legacy));
    const view = d.workers().get('w1');
    expect(view?.api_key).toBe('sk-legacy-plaintext');
    expect(d.workerKeysDue()).toEqual({ plaintext: ['w1'], rekey: [] });
    const diffs: RegistryDocDiff[] = [];
    d.onChange((diff) => diffs.push(diff));
    const resealed = d.resealWorkerKeys();
    expect(resealed).toHaveLength(1);
    expect(holds(resealed, 'sk-legacy-plaintext')).toBe(false);
    expect(d.workers().get('w1')).toBe(view); // readers see no change
    expect(diffs.every((x) => x.upserted.length === 0)).toBe(true);
    expect(d.workerKeysDue()).toEqual({ plaintext: [], rekey: [] });
    expect(d.resealWorkerKeys()).toEqual([]);
  });

  it('survives a rotation of the cluster key: re-sealed under the new primary, opened by the next generation', () => {
    const a = RegistryDoc.create(actor('a'), { sealer: sealerOf(1) });
    const b = RegistryDoc.create(actor('b'), { sealer: sealerOf(2, 1) });
    b.applyChanges(a.upsertWorker('w1', keyed('http://a', 'sk-rotating')));
    expect(b.workers().get('w1')?.api_key).toBe('sk-rotating');
    expect(b.workerKeysDue()).toEqual({ plaintext: [], rekey: ['w1'] });
    const resealed = b.resealWorkerKeys();
    const c = RegistryDoc.create(actor('c'), { sealer: sealerOf(2) });
    c.applyChanges(a.getChangesSince([]));
    expect(c.unreadableWorkerKeys().get('w1')).toBe('unknown_key');
    c.applyChanges(resealed);
    expect(c.workers().get('w1')?.api_key).toBe('sk-rotating');
    expect(c.unreadableWorkerKeys().size).toBe(0);
  });

  it('a restored document opens its keys once the node’s sealer is set', () => {
    const a = RegistryDoc.create(actor('a', 1), { sealer: sealerOf(1) });
    a.upsertWorker('w1', keyed('http://a', 'sk-stored'));
    const restored = RegistryDoc.load(actor('a', 2), a.save());
    expect(restored.workers().get('w1')?.api_key).toBeUndefined();
    const diffs: RegistryDocDiff[] = [];
    restored.onChange((diff) => diffs.push(diff));
    restored.setSealer(sealerOf(1));
    expect(restored.workers().get('w1')?.api_key).toBe('sk-stored');
    expect(diffs.map((x) => x.upserted)).toEqual([['w1']]);
  });
});
