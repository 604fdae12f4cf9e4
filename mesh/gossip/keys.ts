import { hkdfSync } from 'node:crypto';

import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';

/** HKDF info string of the libp2p private-network key; bump the suffix to change the derivation. */
export const PNET_HKDF_INFO = 'smg/libp2p/pnet/1';
export const CLUSTER_KEY_BYTES = 32;

/** A new Ed25519 libp2p identity, as protobuf-encoded private key bytes (store them as they are). */
export async function generateLibp2pKey(): Promise<Uint8Array> {
  return privateKeyToProtobuf(await generateKeyPair('Ed25519'));
}

/** The peer id string (`12D3KooW…`) of a stored key. Synchronous. Throws on bytes that are no key. */
export function peerIdOf(privateKey: Uint8Array): string {
  return peerIdFromPrivateKey(privateKeyFromProtobuf(privateKey)).toString();
}

/** The 32 raw pnet bytes: HKDF-SHA256(ikm = cluster key, salt = empty, info = PNET_HKDF_INFO). */
export function derivePnetKey(clusterKey: Uint8Array): Uint8Array {
  if (clusterKey.length !== CLUSTER_KEY_BYTES) {
    throw new Error(`cluster key must be ${CLUSTER_KEY_BYTES} bytes, got ${clusterKey.length}`);
  }
  return new Uint8Array(hkdfSync('sha256', clusterKey, new Uint8Array(0), PNET_HKDF_INFO, 32));
}

/** The derived key in the swarm-key file format that `@libp2p/pnet`'s `preSharedKey({ psk })` expects. */
export function pnetSwarmKey(clusterKey: Uint8Array): Uint8Array {
  const hex = Buffer.from(derivePnetKey(clusterKey)).toString('hex');
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`);
}
