/**
 * SWIM's PacketTransport over a real UDP socket. Every outgoing packet is wrapped in the replay
 * envelope (replay.ts) and sealed with the cluster keyring (keyring.ts); every incoming one goes
 * through, in order: size check (`oversized`), open (`auth`, or `malformed` for an unknown format),
 * envelope parse (`malformed`), replay guard (`replay`), and only then reaches the handler.
 *
 * Owns the socket and the counters. Never throws out of the event loop: socket errors, send
 * failures and a throwing handler are logged (rate-limited) and counted. Dropped packets are only
 * counted, never logged one by one, so a flood cannot fill the log.
 */
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { isIP, isIPv6 } from 'node:net';
import {
  isDropped,
  Keyring,
  PacketPurpose,
  PlaintextCodec,
  purposeAad,
  type PacketCodec,
} from './keyring.js';
import { decodeEnvelope, ENVELOPE_BYTES, EnvelopeWriter, ReplayGuard, SENDER_ID_BYTES } from './replay.js';
import type { DropReason, PacketTransport } from './transport.js';
import type { MeshFaults } from '../faults.js';

/** the largest datagram accepted or sent by default (64 KiB) */
export const DEFAULT_MAX_PACKET_BYTES = 64 * 1024;
/** the largest UDP payload over IPv4 (65535 − 8 UDP − 20 IP) */
const UDP_MAX_PAYLOAD = 65_507;
const LOG_INTERVAL_MS = 10_000;

/** the part of a pino logger the transport uses */
export interface TransportLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface UdpTransportOptions {
  /** bind address: an IPv4 or IPv6 literal (`0.0.0.0`, `::`, `127.0.0.1`); IPv6 selects udp6 */
  host: string;
  /** bind port; 0 picks a free one */
  port: number;
  /**
   * what peers are told to send to: `host:port`, `[v6]:port`, or a bare host (then the bound port).
   * Defaults to the bound address; required when binding an unspecified address (`0.0.0.0`, `::`).
   */
  advertiseAddress?: string;
  /** the cluster keyring; required unless `insecure` */
  keyring?: Keyring;
  /** send and accept unencrypted packets (still with the replay envelope and a checksum) */
  insecure?: boolean;
  /** a cluster label bound into every packet (memberlist's Label): same key, different label = no talk */
  label?: string;
  /** datagrams larger than this are dropped on receipt and refused on send */
  maxPacketBytes?: number;
  /** see replay.ts */
  replayWindowMs?: number;
  replayCapacity?: number;
  /** wall clock (ms) for envelope stamps and the replay window */
  now?: () => number;
  logger?: TransportLogger;
  /** chaos testing only (mesh/faults.ts): drop, lose or delay datagrams; null/undefined = none */
  faults?: MeshFaults | null;
}

export interface UdpTransportStats {
  /** every datagram read from the socket, dropped ones included */
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
  dropped: Record<DropReason, number>;
  /** outgoing packets not sent: unparsable address, too large, or the socket refused them */
  sendFailures: number;
  /** errors the socket emitted */
  socketErrors: number;
  /** packets whose handler threw */
  handlerErrors: number;
}

/** `host:port` or `[v6]:port` → parts; null if it does not parse */
export function parseHostPort(addr: string): { host: string; port: number } | null {
  let host: string;
  let portText: string;
  if (addr.startsWith('[')) {
    const end = addr.indexOf(']');
    if (end < 0 || addr[end + 1] !== ':') return null;
    host = addr.slice(1, end);
    portText = addr.slice(end + 2);
    if (!isIPv6(host)) return null;
  } else {
    const colon = addr.lastIndexOf(':');
    if (colon <= 0 || addr.indexOf(':') !== colon) return null;
    host = addr.slice(0, colon);
    portText = addr.slice(colon + 1);
  }
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65_535) return null;
  return { host, port };
}

/** the `host:port` form of an address, IPv6 in brackets */
export function formatHostPort(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function isUnspecified(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '0:0:0:0:0:0:0:0';
}

function emptyDrops(): Record<DropReason, number> {
  return { auth: 0, replay: 0, malformed: 0, oversized: 0, unknown_sender: 0 };
}

export class UdpTransport implements PacketTransport {
  readonly localAddress: string;
  /** the largest SWIM payload `send` accepts: the packet limit minus sealing and envelope */
  readonly maxPayloadBytes: number;
  private readonly codec: PacketCodec;
  private readonly aad: Buffer;
  private readonly writer: EnvelopeWriter;
  private readonly guard: ReplayGuard;
  private readonly maxPacketBytes: number;
  /** the send limit: also what one IPv4 datagram carries */
  private readonly maxSendBytes: number;
  private readonly logger: TransportLogger | undefined;
  private readonly lastLogAt = new Map<string, number>();
  private handler: ((from: string, packet: Uint8Array) => void) | undefined;
  /** injected faults (chaos testing only), shared with the gossip node */
  readonly faults: MeshFaults | null;
  private closed: Promise<void> | undefined;
  private readonly counters: UdpTransportStats = {
    packetsIn: 0,
    packetsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    dropped: emptyDrops(),
    sendFailures: 0,
    socketErrors: 0,
    handlerErrors: 0,
  };

  private constructor(
    private readonly socket: dgram.Socket,
    localAddress: string,
    codec: PacketCodec,
    opts: UdpTransportOptions,
  ) {
    this.localAddress = localAddress;
    this.codec = codec;
    this.aad = purposeAad(PacketPurpose.swimPacket, opts.label ?? '');
    const now = opts.now ?? Date.now;
    const sender = randomBytes(SENDER_ID_BYTES);
    this.writer = new EnvelopeWriter(sender, now);
    this.guard = new ReplayGuard({
      windowMs: opts.replayWindowMs,
      capacity: opts.replayCapacity,
      now,
      localSender: sender,
    });
    this.maxPacketBytes = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
    this.maxSendBytes = Math.min(this.maxPacketBytes, UDP_MAX_PAYLOAD);
    this.maxPayloadBytes = Math.max(0, this.maxSendBytes - codec.overhead - ENVELOPE_BYTES);
    this.logger = opts.logger;
    this.faults = opts.faults ?? null;
    socket.on('message', (msg, rinfo) => this.receive(msg, formatHostPort(rinfo.address, rinfo.port)));
    socket.on('error', (err) => {
      this.counters.socketErrors++;
      this.log('socket', 'error', { err }, 'mesh UDP socket error');
    });
  }

  /** binds the socket; rejects on a bad configuration or when the address is taken */
  static async bind(opts: UdpTransportOptions): Promise<UdpTransport> {
    if (!isIP(opts.host)) throw new Error(`mesh bind host must be an IP address, got '${opts.host}'`);
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65_535) {
      throw new Error(`mesh port must be 0..65535, got ${opts.port}`);
    }
    const max = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
    if (!Number.isInteger(max) || max < 1 || max > DEFAULT_MAX_PACKET_BYTES) {
      throw new Error(`maxPacketBytes must be 1..${DEFAULT_MAX_PACKET_BYTES}, got ${max}`);
    }
    let codec: PacketCodec;
    if (opts.keyring) codec = opts.keyring;
    else if (opts.insecure) codec = new PlaintextCodec();
    else throw new Error('the mesh transport needs a cluster key (keyring) unless insecure is set');
    if (isUnspecified(opts.host) && opts.advertiseAddress === undefined) {
      throw new Error(`an advertise address is required when binding ${opts.host}`);
    }
    const socket = dgram.createSocket({ type: isIPv6(opts.host) ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      socket.once('error', onError);
      socket.bind(opts.port, opts.host, () => {
        socket.off('error', onError);
        resolve();
      });
    }).catch((err: unknown) => {
      socket.close();
      throw err;
    });
    const bound = socket.address();
    let local: string;
    try {
      local = advertised(opts.advertiseAddress, opts.host, bound.port);
    } catch (err) {
      socket.close();
      throw err;
    }
    return new UdpTransport(socket, local, codec, opts);
  }

  /** the address and port the socket is bound to (useful with port 0) */
  boundAddress(): string {
    const a = this.socket.address();
    return formatHostPort(a.address, a.port);
  }

  send(to: string, packet: Uint8Array): void {
    if (this.closed) return;
    const target = parseHostPort(to);
    if (!target) {
      this.sendFailed('address', { to }, 'mesh packet to an unparsable address not sent');
      return;
    }
    let sealed: Buffer;
    try {
      sealed = this.codec.seal(this.writer.wrap(packet), this.aad);
    } catch (err) {
      this.sendFailed('seal', { err }, 'mesh packet could not be sealed');
      return;
    }
    if (sealed.length > this.maxSendBytes) {
      this.sendFailed('size', { to, bytes: sealed.length }, 'mesh packet too large, not sent');
      return;
    }
    if (this.faults !== null) {
      const fault = this.faults.outgoing(to);
      if (fault === 'drop') return;
      if (fault > 0) {
        setTimeout(() => {
          if (!this.closed) this.transmit(sealed, target.port, target.host, to);
        }, fault).unref();
        return;
      }
    }
    this.transmit(sealed, target.port, target.host, to);
  }

  private transmit(sealed: Buffer, port: number, host: string, to: string): void {
    try {
      this.socket.send(sealed, port, host, (err) => {
        if (err) this.sendFailed('send', { to, err }, 'mesh packet send failed');
        else {
          this.counters.packetsOut++;
          this.counters.bytesOut += sealed.length;
        }
      });
    } catch (err) {
      this.sendFailed('send', { to, err }, 'mesh packet send failed');
    }
  }

  onPacket(handler: (from: string, packet: Uint8Array) => void): void {
    this.handler = handler;
  }

  /** a snapshot of the counters */
  stats(): UdpTransportStats {
    return { ...this.counters, dropped: { ...this.counters.dropped } };
  }

  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve(); // already closed
      }
    });
    return this.closed;
  }

  private receive(msg: Buffer, from: string): void {
    // chaos testing: a datagram dropped by an injected fault never arrived
    if (this.faults !== null && this.faults.dropIncoming(from)) return;
    this.counters.packetsIn++;
    this.counters.bytesIn += msg.length;
    if (msg.length > this.maxPacketBytes) return this.drop('oversized');
    const opened = this.codec.open(msg, this.aad);
    if (isDropped(opened)) return this.drop(opened.error);
    const env = decodeEnvelope(opened);
    if (!env) return this.drop('malformed');
    if (this.guard.check(env) !== 'ok') return this.drop('replay');
    const handler = this.handler;
    if (!handler) return;
    try {
      handler(from, env.payload);
    } catch (err) {
      this.counters.handlerErrors++;
      this.log('handler', 'error', { err, from }, 'mesh packet handler threw');
    }
  }

  private drop(reason: DropReason): void {
    this.counters.dropped[reason]++;
  }

  private sendFailed(kind: string, obj: object, msg: string): void {
    this.counters.sendFailures++;
    this.log(`send:${kind}`, 'warn', obj, msg);
  }

  /** at most one line per kind every LOG_INTERVAL_MS */
  private log(kind: string, level: 'warn' | 'error', obj: object, msg: string): void {
    if (!this.logger) return;
    const now = Date.now();
    const last = this.lastLogAt.get(kind);
    if (last !== undefined && now - last < LOG_INTERVAL_MS) return;
    this.lastLogAt.set(kind, now);
    this.logger[level]({ ...obj, localAddress: this.localAddress }, msg);
  }
}

function advertised(advertise: string | undefined, host: string, port: number): string {
  if (advertise === undefined) return formatHostPort(host, port);
  const hp = parseHostPort(advertise);
  const h = hp?.host ?? advertise;
  if (isUnspecified(h)) throw new Error(`advertise address cannot be unspecified: ${advertise}`);
  if (hp) return formatHostPort(hp.host, hp.port);
  if (isIP(advertise) || /^[A-Za-z0-9.-]+$/.test(advertise)) return formatHostPort(advertise, port);
  throw new Error(`advertise address must be host, host:port or [v6]:port, got '${advertise}'`);
}
