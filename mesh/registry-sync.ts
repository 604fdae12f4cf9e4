/**
 * Anti-entropy for the registry document: one Automerge sync session over a framed libp2p stream
 * (`/smg/registry/1`). Gossip carries every change once; a session repairs whatever a peer missed
 * (a lost message, a restart, a partition) by exchanging sync messages until neither side has
 * anything the other lacks.
 *
 * Each session uses a fresh sync state (keyed `<peer>#<n>`) that is dropped at the end, so a
 * session never trusts what an earlier, possibly interrupted, session believed the peer had.
 * An empty frame means "nothing to send"; the session ends once both sides sent one in a row.
 *
 * Owns: the session loops. Never: timers (the runtime schedules sessions), stream set-up.
 */
import type { Channel } from './gossip/node.js';
import type { Replica } from '../src/state/replica.js';

const EMPTY = new Uint8Array(0);
/** a session that has not converged after this many round trips is abandoned (and retried later) */
export const MAX_SYNC_ROUNDS = 64;

export interface SyncResult {
  rounds: number;
  /** whether the document changed during the session */
  changed: boolean;
}

let sessionCounter = 0;

/** the initiating side: sends first, ends the session */
export async function runRegistrySync(replica: Replica, peer: string, ch: Channel): Promise<SyncResult> {
  const key = `${peer}#${++sessionCounter}`;
  let changed = false;
  try {
    for (let round = 1; round <= MAX_SYNC_ROUNDS; round++) {
      const out = replica.doc.generateSyncMessage(key);
      await ch.send(out ?? EMPTY);
      const reply = await ch.receive();
      if (reply === null) throw new Error('peer closed the registry sync stream');
      if (reply.length > 0 && replica.receiveRegistrySync(key, reply)) changed = true;
      if (out === null && reply.length === 0) return { rounds: round, changed };
    }
    throw new Error(`registry sync did not converge in ${MAX_SYNC_ROUNDS} rounds`);
  } finally {
    replica.doc.forgetPeer(key);
    await ch.close().catch(() => undefined);
  }
}

/** the answering side: replies to every frame until the initiator closes the stream */
export async function answerRegistrySync(replica: Replica, peer: string, ch: Channel): Promise<SyncResult> {
  const key = `${peer}#in${++sessionCounter}`;
  let changed = false;
  let rounds = 0;
  try {
    for (;;) {
      const frame = await ch.receive();
      if (frame === null) return { rounds, changed };
      if (++rounds > MAX_SYNC_ROUNDS + 1) throw new Error('registry sync peer exceeded the round limit');
      if (frame.length > 0 && replica.receiveRegistrySync(key, frame)) changed = true;
      await ch.send(replica.doc.generateSyncMessage(key) ?? EMPTY);
    }
  } finally {
    replica.doc.forgetPeer(key);
    await ch.close().catch(() => undefined);
  }
}
