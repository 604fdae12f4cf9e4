/**
 * What SWIM needs from the network and the clock, injected so the protocol runs unchanged over
 * real UDP (udp-transport.ts) and inside the deterministic simulator (simulator.ts).
 */

/** a datagram transport; addresses are `host:port` strings */
export interface PacketTransport {
  /** this member's advertised address */
  readonly localAddress: string;
  /** best effort, never throws; oversized or undeliverable packets are dropped */
  send(to: string, packet: Uint8Array): void;
  /** one handler; packets arrive already authenticated and decrypted by the transport */
  onPacket(handler: (from: string, packet: Uint8Array) => void): void;
  close(): Promise<void>;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** uniform in [0, 1) */
export type Random = () => number;

/** why a received packet was dropped (also the label of smg_mesh_dropped_packets_total) */
export type DropReason = 'auth' | 'replay' | 'malformed' | 'oversized' | 'unknown_sender';
