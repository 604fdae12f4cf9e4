/**
 * The cluster keyring: which keys seal and open SWIM packets (AES-256-GCM), after the design of
 * hashicorp/memberlist's keyring. One primary key seals every outgoing packet; every installed key
 * (primary first) is tried on incoming ones, so a key can be rotated without a flag day:
 * install the new key everywhere, `use` it everywhere, then `remove` the old one.
 *
 * This module owns the bytes of a sealed packet (version ‖ nonce ‖ ciphertext ‖ tag) and the
 * plaintext variant used with `--mesh-insecure`. It never looks inside the plaintext (see replay.ts
 * for the envelope) and never throws on hostile input: `open` answers with a drop reason.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { DropReason } from './transport.js';

/** cluster keys are AES-256 keys */
export const CLUSTER_KEY_BYTES = 32;
/** first byte of a packet sealed with AES-256-GCM */
export const SEALED_VERSION = 0x01;
/** first byte of a packet sent without encryption (`--mesh-insecure`) */
export const PLAINTEXT_VERSION = 0x00;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** bytes a sealed packet adds to its plaintext */
export const SEALED_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES;
/** bytes of the truncated SHA-256 that ends a plaintext packet */
export const CHECKSUM_BYTES = 8;
/** bytes a plaintext packet adds to its plaintext */
export const PLAINTEXT_OVERHEAD = 1 + CHECKSUM_BYTES;

/**
 * What a packet is for; part of the additional authenticated data, so a packet sealed for one
 * purpose fails authentication when presented as another (a UDP probe replayed into a push-pull
 * stream, say). A cluster label (memberlist's `Label`) may be appended to keep two clusters that
 * share a key apart.
 */
export const PacketPurpose = {
  /** a SWIM datagram over UDP */
  swimPacket: 'smg/swim/udp/1',
  /** a frame of a SWIM push-pull (full state) exchange over TCP */
  swimPushPull: 'smg/swim/tcp/1',
} as const;
export type PacketPurpose = (typeof PacketPurpose)[keyof typeof PacketPurpose];

/** the additional authenticated data for a purpose and an optional cluster label */
export function purposeAad(purpose: PacketPurpose, label = ''): Buffer {
  return Buffer.from(label === '' ? purpose : `${purpose}\0${label}`, 'utf8');
}

export class ClusterKeyError extends Error {
  override readonly name = 'ClusterKeyError';
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?$/;
const BASE64URL = /^[A-Za-z0-9_-]*$/;

/**
 * Parses `--mesh-cluster-key` / `SMG_MESH_CLUSTER_KEY`: 32 bytes in base64 (standard, or URL-safe
 * without padding). Throws a ClusterKeyError that says what is wrong and how to make a good key.
 */
export function parseClusterKey(b64: string): Buffer {
  const text = b64.trim();
  const hint = 'generate one with `openssl rand -base64 32`';
  if (text === '') throw new ClusterKeyError(`cluster key is empty; ${hint}`);
  let key: Buffer;
  if (BASE64.test(text)) key = Buffer.from(text, 'base64');
  else if (BASE64URL.test(text) && text.length % 4 !== 1) key = Buffer.from(text, 'base64url');
  else throw new ClusterKeyError(`cluster key is not valid base64; ${hint}`);
  if (key.length !== CLUSTER_KEY_BYTES) {
    throw new ClusterKeyError(
      `cluster key must be ${CLUSTER_KEY_BYTES} bytes, got ${key.length} after base64 decoding; ${hint}`,
    );
  }
  return key;
}

/** a key file is a handful of lines; anything larger is not one */
export const MAX_CLUSTER_KEY_FILE_BYTES = 64 * 1024;

/**
 * The text of a cluster key file (`--mesh-cluster-key-file`): one base64 key per line, primary
 * first; blank lines and lines starting with `#` are skipped. Returns the keys' base64 text.
 * Throws a ClusterKeyError naming the first bad line by number, never by its content.
 */
export function parseClusterKeyFile(text: string): string[] {
  if (text.length > MAX_CLUSTER_KEY_FILE_BYTES) {
    throw new ClusterKeyError(`larger than ${MAX_CLUSTER_KEY_FILE_BYTES} bytes: not a key file`);
  }
  const keys: string[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    try {
      parseClusterKey(line);
    } catch (err) {
      throw new ClusterKeyError(`line ${i + 1}: ${(err as Error).message}`);
    }
    keys.push(line);
  }
  if (keys.length === 0) {
    throw new ClusterKeyError(
      'holds no key (one base64 key per line, primary first; generate one with `openssl rand -base64 32`)',
    );
  }
  return keys;
}

/** a fresh random cluster key in base64 (for the demo and for operators) */
export function generateClusterKey(): string {
  return randomBytes(CLUSTER_KEY_BYTES).toString('base64');
}

function checkKey(key: Uint8Array): Buffer {
  if (!(key instanceof Uint8Array) || key.length !== CLUSTER_KEY_BYTES) {
    throw new ClusterKeyError(`cluster key must be ${CLUSTER_KEY_BYTES} bytes, got ${key?.length ?? 0}`);
  }
  return Buffer.from(key); // a copy: the caller may reuse its buffer
}

function sameKey(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** why a packet was not opened, or its plaintext */
export type OpenResult = Buffer | { error: DropReason };

export function isDropped(r: OpenResult): r is { error: DropReason } {
  return !(r instanceof Uint8Array);
}

/** seals and opens packets; the Keyring with a key, PlaintextCodec with `--mesh-insecure` */
export interface PacketCodec {
  /** bytes added to every packet */
  readonly overhead: number;
  seal(plain: Uint8Array, aad: Uint8Array): Buffer;
  /** never throws */
  open(packet: Uint8Array, aad: Uint8Array): OpenResult;
}

export class Keyring implements PacketCodec {
  readonly overhead = SEALED_OVERHEAD;
  /** primary first */
  private ring: Buffer[];

  constructor(primary: Uint8Array, others: Iterable<Uint8Array> = []) {
    this.ring = [checkKey(primary)];
    for (const k of others) this.install(k);
  }

  /** a keyring from base64 keys, the first being the primary */
  static fromBase64(primary: string, others: Iterable<string> = []): Keyring {
    return new Keyring(parseClusterKey(primary), [...others].map(parseClusterKey));
  }

  /** copies of the installed keys, primary first */
  keys(): Buffer[] {
    return this.ring.map((k) => Buffer.from(k));
  }

  primaryKey(): Buffer {
    return Buffer.from(this.ring[0]);
  }

  /** adds a key for opening packets; installing an installed key does nothing */
  install(key: Uint8Array): void {
    const k = checkKey(key);
    if (!this.ring.some((r) => sameKey(r, k))) this.ring.push(k);
  }

  /** makes an installed key the primary (the one that seals) */
  use(key: Uint8Array): void {
    const k = checkKey(key);
    const i = this.ring.findIndex((r) => sameKey(r, k));
    if (i < 0) throw new ClusterKeyError('cannot use a key that is not installed; install it first');
    const [chosen] = this.ring.splice(i, 1);
    this.ring.unshift(chosen);
  }

  /** removes a key; the primary cannot be removed (use another key first) */
  remove(key: Uint8Array): void {
    const k = checkKey(key);
    if (sameKey(this.ring[0], k)) {
      throw new ClusterKeyError('cannot remove the primary key; use another key first');
    }
    this.ring = this.ring.filter((r) => !sameKey(r, k));
  }

  /** version ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag, sealed with the primary key */
  seal(plain: Uint8Array, aad: Uint8Array): Buffer {
    const header = Buffer.allocUnsafe(1 + NONCE_BYTES);
    header[0] = SEALED_VERSION;
    randomBytes(NONCE_BYTES).copy(header, 1);
    const cipher = createCipheriv('aes-256-gcm', this.ring[0], header.subarray(1), {
      authTagLength: TAG_BYTES,
    });
    cipher.setAAD(Buffer.concat([header.subarray(0, 1), aad]));
    const body = cipher.update(plain);
    const final = cipher.final();
    return Buffer.concat([header, body, final, cipher.getAuthTag()]);
  }

  /** the plaintext, or `malformed` (too short, unknown version) or `auth` (no key opens it) */
  open(packet: Uint8Array, aad: Uint8Array): OpenResult {
    if (packet.length < SEALED_OVERHEAD) return { error: 'malformed' };
    const version = packet[0];
    if (version === PLAINTEXT_VERSION) return { error: 'auth' }; // unauthenticated: not accepted here
    if (version !== SEALED_VERSION) return { error: 'malformed' };
    const buf = Buffer.from(packet.buffer, packet.byteOffset, packet.length);
    const nonce = buf.subarray(1, 1 + NONCE_BYTES);
    const body = buf.subarray(1 + NONCE_BYTES, buf.length - TAG_BYTES);
    const tag = buf.subarray(buf.length - TAG_BYTES);
    const fullAad = Buffer.concat([buf.subarray(0, 1), aad]);
    for (const key of this.ring) {
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
        decipher.setAAD(fullAad);
        decipher.setAuthTag(tag);
        const plain = decipher.update(body);
        const final = decipher.final(); // throws when the tag does not match
        return final.length === 0 ? plain : Buffer.concat([plain, final]);
      } catch {
        // not this key; try the next
      }
    }
    return { error: 'auth' };
  }
}

function checksum(version: Buffer, aad: Uint8Array, body: Uint8Array): Buffer {
  return createHash('sha256').update(version).update(aad).update(body).digest().subarray(0, CHECKSUM_BYTES);
}

/**
 * `--mesh-insecure`: version 0x00 ‖ plaintext ‖ first 8 bytes of SHA-256(version ‖ aad ‖ plaintext).
 * The checksum catches corruption and purpose/label mismatches; it is not an authenticator, since
 * anyone can compute it. A keyed node drops these packets as `auth`, and this codec drops sealed
 * ones the same way: keyed and unkeyed nodes never form one cluster.
 */
export class PlaintextCodec implements PacketCodec {
  readonly overhead = PLAINTEXT_OVERHEAD;
  private static readonly VERSION = Buffer.from([PLAINTEXT_VERSION]);

  seal(plain: Uint8Array, aad: Uint8Array): Buffer {
    return Buffer.concat([PlaintextCodec.VERSION, plain, checksum(PlaintextCodec.VERSION, aad, plain)]);
  }

  open(packet: Uint8Array, aad: Uint8Array): OpenResult {
    if (packet.length < PLAINTEXT_OVERHEAD) return { error: 'malformed' };
    if (packet[0] === SEALED_VERSION) return { error: 'auth' };
    if (packet[0] !== PLAINTEXT_VERSION) return { error: 'malformed' };
    const buf = Buffer.from(packet.buffer, packet.byteOffset, packet.length);
    const body = buf.subarray(1, buf.length - CHECKSUM_BYTES);
    const sum = buf.subarray(buf.length - CHECKSUM_BYTES);
    if (!checksum(PlaintextCodec.VERSION, aad, body).equals(sum)) return { error: 'malformed' };
    return body;
  }
}
