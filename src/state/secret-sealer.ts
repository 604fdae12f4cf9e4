/**
 * Sealed secrets of the replicated registry. A worker's `api_key` enters the registry document —
 * and so its history, every snapshot and change on disk and every gossip or sync message — only
 * sealed: AES-256-GCM with a random 96-bit nonce, bound to the worker id, under a key derived with
 * HKDF-SHA256 and a label of its own from a root key: the cluster key (the SWIM/libp2p key itself
 * never seals anything here), or a node's local key when there is no cluster key.
 *
 * Several root keys may be installed, primary first (`--mesh-cluster-key new,old` during a
 * rotation): the primary seals, any of them opens. A sealed value names its key by a 4-byte id
 * (a hash of the derived key, which reveals nothing of it), so a value sealed under a key this node
 * lacks is told apart from a damaged one.
 *
 * Text form: base64url(version 0x01 ‖ key id (4) ‖ nonce (12) ‖ ciphertext ‖ tag (16)); the
 * version and key id are authenticated with the context.
 *
 * Owns: the derivation and the sealed format. Never: I/O, logging, throwing on hostile input
 * (`open` answers with a reason).
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';

/** root keys are 32 bytes, like cluster keys */
export const ROOT_KEY_BYTES = 32;
/** HKDF info of the sealing key; bump the suffix to change the derivation */
export const SEALING_HKDF_INFO = 'smg/registry/secret-seal/1';
const AAD_LABEL = 'smg/registry/secret/1';
const VERSION = 0x01;
const KEY_ID_BYTES = 4;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

/** why a sealed value did not open */
export type SealFailure =
  /** not a sealed value of a version this node knows */
  | 'malformed'
  /** sealed under a key this node does not hold (another cluster key, another node's local key) */
  | 'unknown_key'
  /** the key id matches but authentication fails: damaged, or moved to another worker */
  | 'auth';

export type OpenResult =
  | { value: string; /** opened with the primary key (else: due for re-sealing) */ primary: boolean }
  | { error: SealFailure; /** hex key id of the value, when it has one */ keyId?: string };

interface DerivedKey {
  key: Buffer;
  id: Buffer;
}

function derive(root: Uint8Array): DerivedKey {
  if (!(root instanceof Uint8Array) || root.length !== ROOT_KEY_BYTES) {
    throw new Error(`a sealing root key must be ${ROOT_KEY_BYTES} bytes, got ${root?.length ?? 0}`);
  }
  const key = Buffer.from(hkdfSync('sha256', root, new Uint8Array(0), SEALING_HKDF_INFO, 32));
  const id = createHash('sha256')
    .update('smg/registry/secret-key-id/1')
    .update(key)
    .digest()
    .subarray(0, KEY_ID_BYTES);
  return { key, id };
}

function aad(header: Buffer, context: string): Buffer {
  return Buffer.concat([
    Buffer.from(`${AAD_LABEL}\0${context}\0`, 'utf8'),
    header.subarray(0, 1 + KEY_ID_BYTES),
  ]);
}

export class SecretSealer {
  /** primary first */
  private readonly ring: DerivedKey[];

  /** `primary` seals; it and `others` open */
  constructor(primary: Uint8Array, others: Iterable<Uint8Array> = []) {
    const ring = [derive(primary)];
    for (const root of others) {
      const d = derive(root);
      if (!ring.some((r) => r.key.equals(d.key))) ring.push(d);
    }
    this.ring = ring;
  }

  /** a sealer under a fresh random key: what it seals opens only in this process */
  static ephemeral(): SecretSealer {
    return new SecretSealer(randomBytes(ROOT_KEY_BYTES));
  }

  /** hex id of the key that seals */
  get primaryKeyId(): string {
    return this.ring[0].id.toString('hex');
  }

  /** `value` sealed under the primary key for `context` (the worker id): it opens for that context only */
  seal(value: string, context: string): string {
    const { key, id } = this.ring[0];
    const header = Buffer.alloc(HEADER_BYTES);
    header[0] = VERSION;
    id.copy(header, 1);
    randomBytes(NONCE_BYTES).copy(header, 1 + KEY_ID_BYTES);
    const cipher = createCipheriv('aes-256-gcm', key, header.subarray(1 + KEY_ID_BYTES), {
      authTagLength: TAG_BYTES,
    });
    cipher.setAAD(aad(header, context));
    const body = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
    return Buffer.concat([header, body, cipher.getAuthTag()]).toString('base64url');
  }

  /** the value sealed for `context`, or why it does not open here; never throws */
  open(sealed: string, context: string): OpenResult {
    if (typeof sealed !== 'string' || !BASE64URL.test(sealed)) return { error: 'malformed' };
    const buf = Buffer.from(sealed, 'base64url');
    if (buf.length < HEADER_BYTES + TAG_BYTES || buf[0] !== VERSION) return { error: 'malformed' };
    const id = buf.subarray(1, 1 + KEY_ID_BYTES);
    const nonce = buf.subarray(1 + KEY_ID_BYTES, HEADER_BYTES);
    const body = buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES);
    const tag = buf.subarray(buf.length - TAG_BYTES);
    const keyId = id.toString('hex');
    let known = false;
    for (let i = 0; i < this.ring.length; i++) {
      const k = this.ring[i];
      if (!k.id.equals(id)) continue;
      known = true;
      try {
        const decipher = createDecipheriv('aes-256-gcm', k.key, nonce, { authTagLength: TAG_BYTES });
        decipher.setAAD(aad(buf, context));
        decipher.setAuthTag(tag);
        const value = Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8');
        return { value, primary: i === 0 };
      } catch {
        // a key id collision, or a damaged value: try the next key with this id
      }
    }
    return { error: known ? 'auth' : 'unknown_key', keyId };
  }
}

let processWide: SecretSealer | undefined;

/**
 * The sealer of documents given none: a random key per process, so a secret never reaches a
 * document in plaintext even where no key was configured (tests, embedders). A gateway installs
 * its own (see src/workers/worker-keys.ts).
 */
export function processSealer(): SecretSealer {
  processWide ??= SecretSealer.ephemeral();
  return processWide;
}
