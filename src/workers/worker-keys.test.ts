/**
 * A node's sealing keys: its own key in the data dir without a cluster key (a restart opens what it
 * sealed), the cluster key with one (every peer opens, a local key from before still opens and is
 * replaced at start), and one warning per worker whose key the node cannot open.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { CLUSTER_KEY_BYTES } from '../../mesh/swim/keyring.js';
import { SEALING_KEY_FILE } from '../../store/sealing-key.js';
import { RegistryDoc, actorIdFor } from '../state/registry-doc.js';
import { Replica } from '../state/replica.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import { resealWorkerKeys, watchWorkerKeys, workerKeySealer } from './worker-keys.js';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'smg-worker-keys-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function captureLogger(): { logger: Logger; text: () => string; records: () => Record<string, unknown>[] } {
  let text = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return {
    logger: pino({ level: 'debug' }, out),
    text: () => text,
    records: () =>
      text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const CLUSTER = Buffer.alloc(CLUSTER_KEY_BYTES, 9).toString('base64');
const keyed = (url: string, key: string) => ({ ...testWorkerSpec(url), api_key: key });

describe('worker key sealing on a node', () => {
  it('without a cluster key: a key of its own in the data dir, so a restart opens what it sealed', () => {
    const dir = tempDir();
    const { logger, text } = captureLogger();
    const first = workerKeySealer({ clusterKeys: [], dataDir: dir, logger });
    expect(readdirSync(dir)).toEqual([SEALING_KEY_FILE]);
    expect(text()).toContain('sealing key created');
    const doc = RegistryDoc.create(actorIdFor('n', 1), { sealer: first });
    doc.upsertWorker('w1', keyed('http://a:1', 'sk-node-local'));
    const restarted = RegistryDoc.load(actorIdFor('n', 2), doc.save(), [], {
      sealer: workerKeySealer({ clusterKeys: [], dataDir: dir, logger }),
    });
    expect(restarted.workers().get('w1')?.api_key).toBe('sk-node-local');
    // without a data dir: a key of this process only
    const other = RegistryDoc.load(actorIdFor('n', 3), doc.save(), [], {
      sealer: workerKeySealer({ clusterKeys: [], logger }),
    });
    expect(other.unreadableWorkerKeys().get('w1')).toBe('unknown_key');
  });

  it('with a cluster key: no local file is made; an old local key still opens and is replaced at start', () => {
    const dir = tempDir();
    const { logger, records } = captureLogger();
    expect(workerKeySealer({ clusterKeys: [CLUSTER], dataDir: tempDir(), logger })).toBeDefined();
    // the node ran without a cluster key first
    const before = RegistryDoc.create(actorIdFor('n', 1), {
      sealer: workerKeySealer({ clusterKeys: [], dataDir: dir, logger }),
    });
    before.upsertWorker('w1', keyed('http://a:1', 'sk-from-before'));
    // now it joins a keyed mesh
    const replica = new Replica({
      nodeId: 'n',
      registryDoc: RegistryDoc.load(actorIdFor('n', 2), before.save()),
      sealer: workerKeySealer({ clusterKeys: [CLUSTER], dataDir: dir, logger }),
    });
    expect(replica.registry.get('w1')?.spec.api_key).toBe('sk-from-before');
    const written: Uint8Array[] = [];
    replica.onRegistryChanges((changes) => written.push(...changes));
    resealWorkerKeys(replica, logger);
    expect(written.length).toBeGreaterThan(0);
    expect(
      records().some((r) => r.msg === 'worker api_keys sealed again under the primary cluster key'),
    ).toBe(true);
    // a peer with the cluster key alone opens it
    const peer = RegistryDoc.create(actorIdFor('p', 1), {
      sealer: workerKeySealer({ clusterKeys: [CLUSTER], logger }),
    });
    peer.applyChanges(replica.doc.getChangesSince([]));
    expect(peer.workers().get('w1')?.api_key).toBe('sk-from-before');
  });

  it('warns once per worker it cannot open, naming the worker and never a key', () => {
    const { logger, records, text } = captureLogger();
    const writer = RegistryDoc.create(actorIdFor('a', 1), {
      sealer: workerKeySealer({ clusterKeys: [CLUSTER], logger }),
    });
    const replica = new Replica({ nodeId: 'b', sealer: workerKeySealer({ clusterKeys: [], logger }) });
    const stop = watchWorkerKeys(replica, logger);
    replica.applyRegistryChanges(writer.upsertWorker('w1', keyed('http://a:1', 'sk-unreadable-here')));
    replica.applyRegistryChanges(
      writer.upsertWorker('w1', { ...keyed('http://a:1', 'sk-unreadable-here'), priority: 9 }),
    );
    const warnings = records().filter(
      (r) => r.msg === 'cannot open the api_key of a worker; calling it without its key',
    );
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ worker_id: 'w1', url: 'http://a:1', reason: 'unknown_key' });
    expect(replica.registry.get('w1')?.spec.api_key).toBeUndefined();
    expect(text()).not.toContain('sk-unreadable-here');
    stop();
  });
});
