// The polyfill must be evaluated before any libp2p module: keep this the first import.
import './polyfill.js';

import { isIP } from 'node:net';

import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys';
import { gossipsub, StrictNoSign, StrictSign, TopicValidatorResult } from '@libp2p/gossipsub';
import type { GossipSub, Message, SubscriptionChangeData } from '@libp2p/gossipsub';
import { identify } from '@libp2p/identify';
import type { Identify } from '@libp2p/identify';
import type { Libp2p, PeerId } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { preSharedKey } from '@libp2p/pnet';
import { tcp } from '@libp2p/tcp';
import { multiaddr as parseMultiaddr } from '@multiformats/multiaddr';
import type { Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';

import { hostOfAddress, type MeshFaults } from '../faults.js';
import { StreamChannel } from './channel.js';
import type { Channel } from './channel.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_PAYLOAD_BYTES,
  decodeBatch,
  packBatches,
} from './framing.js';
import { pnetSwarmKey } from './keys.js';

export type { Channel } from './channel.js';
export { generateLibp2pKey, peerIdOf, derivePnetKey, pnetSwarmKey, PNET_HKDF_INFO } from './keys.js';
export { MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, DEFAULT_MAX_FRAME_BYTES } from './framing.js';

export interface GossipLogger {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
  debug?(o: object, m: string): void;
}

export interface GossipNodeOptions {
  /** protobuf-encoded libp2p private key (Ed25519), see generateLibp2pKey() */
  privateKey: Uint8Array;
  /** TCP bind address (e.g. '127.0.0.1', '0.0.0.0', '::') */
  host: string;
  /** TCP port, 0 = pick one */
  port: number;
  /** what goes into the advertised multiaddr (IPv4 or IPv6 literal) */
  advertiseHost: string;
  /** 32-byte cluster key → libp2p private network; undefined = no private network (insecure mode) */
  clusterKey?: Uint8Array;
  /** batching interval of publish(), default 50 ms */
  batchMs?: number;
  /**
   * per-topic batching interval overriding batchMs (e.g. 0 for rare, latency-sensitive registry
   * changes: flushed on the next turn of the event loop, still one message per tick)
   */
  topicBatchMs?: Readonly<Record<string, number>>;
  /**
   * sign every gossipsub message with the node's key (StrictSign, default true). Inside a private
   * network only key holders connect, so a mesh whose peers all trust each other may turn this off
   * (StrictNoSign, content-addressed message ids): it saves one Ed25519 signature per batch sent and
   * one verification per batch received; handlers then get '' as the sender.
   */
  signMessages?: boolean;
  logger?: GossipLogger;
  /** frame limit of channels (handle/open), default 4 MiB */
  maxFrameBytes?: number;
  /**
   * chaos testing only (mesh/faults.ts): connections to or from blocked hosts are refused by the
   * connection gater and closed when the faults change; null/undefined = none
   */
  faults?: MeshFaults | null;
}

export interface TopicStats {
  /** gossipsub messages (batches) received/sent */
  messagesIn: number;
  messagesOut: number;
  /** payloads delivered to handlers / queued by publish() */
  payloadsIn: number;
  payloadsOut: number;
  /** batch bytes received/sent */
  bytesIn: number;
  bytesOut: number;
}

export interface GossipStats {
  topics: Record<string, TopicStats>;
  dropped: { malformed: number; oversized: number; handler_error: number };
  /** gossipsub publish() calls that failed (the batch is lost; anti-entropy repairs) */
  publishErrors: number;
  peersConnected: number;
  peersWanted: number;
  /** dial attempts/failures by the re-dial loop; rejected = connect() calls with a bad id/address */
  dials: { attempts: number; failures: number; rejected: number };
  streams: { opened: number; failed: number; accepted: number; handlerErrors: number };
}

/** Connections to wanted peers carry this tag so the connection manager never prunes them. */
const WANTED_TAG = 'smg-wanted';
const WANTED_TAG_VALUE = 100;
const REDIAL_MIN_MS = 250;
const REDIAL_MAX_MS = 10_000;
/** a connection that stayed up this long resets the re-dial backoff */
const STABLE_CONNECTION_MS = 10_000;
const DIAL_TIMEOUT_MS = 5_000;
const OPEN_TIMEOUT_MS = 10_000;
const WATCHDOG_MS = 5_000;
const STOP_FLUSH_WAIT_MS = 1_000;
/** remembered hung-up peers whose inbound connections are refused (bounded) */
const MAX_REFUSED = 1024;
const PROTOCOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

type Services = { identify: Identify; pubsub: GossipSub };

interface Wanted {
  id: string;
  peerId: PeerId;
  addr: Multiaddr;
  attempt: number;
  timer: ReturnType<typeof setTimeout> | null;
  dialing: AbortController | null;
  /** when the current connection came up (0 = not connected) */
  connectedAt: number;
}

const noopLogger: GossipLogger = { info() {}, warn() {} };

function errInfo(err: unknown): { err: string } {
  return { err: err instanceof Error ? err.message : String(err) };
}

function ipProto(host: string): 'ip4' | 'ip6' {
  const v = isIP(host);
  if (v === 4) return 'ip4';
  if (v === 6) return 'ip6';
  throw new Error(`not an IP literal: ${host}`);
}

export class GossipNode {
  readonly peerId: string;
  readonly multiaddr: string;

  private readonly log: GossipLogger;
  private readonly batchMs: number;
  private readonly maxFrameBytes: number;
  private readonly queues = new Map<string, Uint8Array[]>();
  private flushTimer: ReturnType<typeof setTimeout> | null = null;
  /** when the pending flush fires (ms since epoch) */
  private flushDue = 0;
  private readonly topicBatchMs: Readonly<Record<string, number>>;
  private publishChain: Promise<void> = Promise.resolve();
  private readonly handlers = new Map<string, Set<(payload: Uint8Array, from: string) => void>>();
  private readonly wanted = new Map<string, Wanted>();
  private readonly disconnectHandlers = new Set<(peerId: string) => void>();
  private readonly topicStats = new Map<string, TopicStats>();
  private readonly dropped = { malformed: 0, oversized: 0, handler_error: 0 };
  private readonly counters = {
    publishErrors: 0,
    dialAttempts: 0,
    dialFailures: 0,
    connectRejected: 0,
    streamsOpened: 0,
    streamsFailed: 0,
    streamsAccepted: 0,
    streamHandlerErrors: 0,
  };
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private offFaults: (() => void) | null = null;
  private stopping = false;
  private stopPromise: Promise<void> | null = null;

  private constructor(
    private readonly libp2p: Libp2p<Services>,
    private readonly refused: Set<string>,
    opts: GossipNodeOptions,
    port: number,
    /** fault injection: the host each wanted peer was told to be at (peer id → host) */
    private readonly faultHosts: Map<string, string> | null = null,
  ) {
    this.log = opts.logger ?? noopLogger;
    this.batchMs = opts.batchMs ?? 50;
    this.topicBatchMs = { ...(opts.topicBatchMs ?? {}) };
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.peerId = libp2p.peerId.toString();
    this.multiaddr = `/${ipProto(opts.advertiseHost)}/${opts.advertiseHost}/tcp/${port}/p2p/${this.peerId}`;

    libp2p.addEventListener('peer:connect', (evt) => {
      const w = this.wanted.get(evt.detail.toString());
      if (w == null) return;
      w.connectedAt = Date.now();
      if (w.timer != null) clearTimeout(w.timer);
      w.timer = null;
    });
    libp2p.addEventListener('peer:disconnect', (evt) => {
      const id = evt.detail.toString();
      const w = this.wanted.get(id);
      if (w == null || this.stopping) return;
      this.log.info({ peer: id }, 'gossip: wanted peer disconnected');
      for (const h of [...this.disconnectHandlers]) {
        try {
          h(id);
        } catch (err) {
          this.log.warn({ peer: id, ...errInfo(err) }, 'gossip: onPeerDisconnected handler threw');
        }
      }
      // A connection that lived long enough resets the backoff; one that drops right away (the
      // remote refuses us after the handshake, or flaps) keeps backing off instead of storming.
      if (w.connectedAt > 0 && Date.now() - w.connectedAt >= STABLE_CONNECTION_MS) w.attempt = 0;
      w.connectedAt = 0;
      this.scheduleDial(w, w.attempt === 0 ? 50 + Math.floor(Math.random() * 100) : this.backoff(w));
      w.attempt = Math.min(w.attempt + 1, 16);
    });
    libp2p.services.pubsub.addEventListener('message', (evt) => this.onMessage(evt.detail));
    const faults = opts.faults;
    if (faults != null) this.offFaults = faults.onChange(() => this.closeBlocked(faults));
    this.watchdog = setInterval(() => this.checkWanted(), WATCHDOG_MS);
    this.watchdog.unref();
  }

  static async start(opts: GossipNodeOptions): Promise<GossipNode> {
    const privateKey = privateKeyFromProtobuf(opts.privateKey);
    const listen = `/${ipProto(opts.host)}/${opts.host}/tcp/${opts.port}`;
    ipProto(opts.advertiseHost);
    const refused = new Set<string>();
    const faults = opts.faults ?? null;
    // fault injection: inbound connections over loopback come from 127.0.0.1 whatever the peer's
    // host, so a peer's host is looked up by its id (learned in connect())
    const faultHosts = faults === null ? null : new Map<string, string>();
    const blockedPeer = (peerId: PeerId): boolean => {
      const host = faultHosts?.get(peerId.toString());
      return host !== undefined && faults !== null && faults.denyConnection(host);
    };
    const libp2p = await createLibp2p<Services>({
      privateKey,
      addresses: { listen: [listen] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      ...(opts.clusterKey != null
        ? { connectionProtector: preSharedKey({ psk: pnetSwarmKey(opts.clusterKey) }) }
        : {}),
      // no peerDiscovery / peerRouters: nothing dials on its own, only connect() does
      connectionManager: {
        inboundConnectionThreshold: 1_000,
        maxIncomingPendingConnections: 64,
        dialTimeout: DIAL_TIMEOUT_MS,
        // wanted peers are redialled by GossipNode, not by libp2p's keep-alive reconnect queue
        reconnectRetries: 0,
      },
      connectionGater: {
        // a peer we hung up on may still want us; refuse it until connect() wants it again
        denyInboundEncryptedConnection: (peerId) => refused.has(peerId.toString()),
        denyDialPeer: (peerId) => refused.has(peerId.toString()),
        ...(faults !== null && {
          denyInboundEncryptedConnection: (peerId: PeerId) =>
            refused.has(peerId.toString()) || blockedPeer(peerId),
          denyDialPeer: (peerId: PeerId) => refused.has(peerId.toString()) || blockedPeer(peerId),
          denyDialMultiaddr: (ma: Multiaddr) => faults.denyConnection(ma.toString()),
          denyInboundConnection: (maConn: { remoteAddr: Multiaddr }) =>
            faults.denyConnection(maConn.remoteAddr.toString()),
          denyOutboundEncryptedConnection: (peerId: PeerId) => blockedPeer(peerId),
        }),
      },
      services: {
        identify: identify(),
        pubsub: gossipsub({
          globalSignaturePolicy: opts.signMessages === false ? StrictNoSign : StrictSign,
          allowPublishToZeroTopicPeers: true,
          emitSelf: false,
          fallbackToFloodsub: false,
          // Small, fully connected clusters (≤ 10 peers): the origin publishes straight to every
          // subscriber (one hop, never waits for a heartbeat or mesh formation); the mesh, whose
          // members relay each message once more, only adds redundancy, so a D of 2 instead of the
          // default 6 cuts duplicate traffic while keeping a second path (README: measurements).
          floodPublish: true,
          D: 2,
          Dlo: 1,
          Dhi: 4,
          Dout: 0,
          Dlazy: 2,
          doPX: false,
          // an RPC carries at most a few batches; 4 MiB leaves room for IWANT replies
          maxInboundDataLength: 4 * 1024 * 1024,
        }),
      },
    });
    let port = opts.port;
    if (port === 0) {
      for (const ma of libp2p.getMultiaddrs()) {
        const tcpPart = ma.getComponents().find((c) => c.name === 'tcp');
        if (tcpPart?.value != null) {
          port = Number(tcpPart.value);
          break;
        }
      }
    }
    if (!Number.isInteger(port) || port <= 0) {
      await libp2p.stop();
      throw new Error('gossip: could not determine the listening TCP port');
    }
    const node = new GossipNode(libp2p, refused, opts, port, faultHosts);
    node.log.info(
      { peerId: node.peerId, multiaddr: node.multiaddr, pnet: opts.clusterKey != null },
      'gossip: started',
    );
    return node;
  }

  // ---------------------------------------------------------------- pub/sub

  publish(topic: string, payload: Uint8Array): void {
    if (payload.length > MAX_PAYLOAD_BYTES) {
      throw new Error(`gossip payload of ${payload.length} bytes exceeds the limit of ${MAX_PAYLOAD_BYTES}`);
    }
    if (this.stopping) return;
    let q = this.queues.get(topic);
    if (q == null) {
      q = [];
      this.queues.set(topic, q);
    }
    q.push(payload);
    this.stat(topic).payloadsOut++;
    const delay = Object.hasOwn(this.topicBatchMs, topic) ? this.topicBatchMs[topic] : this.batchMs;
    const due = Date.now() + delay;
    if (this.flushTimer != null && this.flushDue <= due) return;
    if (this.flushTimer != null) clearTimeout(this.flushTimer);
    this.flushDue = due;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      this.flush();
    }, delay);
  }

  subscribe(topic: string, handler: (payload: Uint8Array, from: string) => void): () => void {
    let set = this.handlers.get(topic);
    if (set == null) {
      set = new Set();
      this.handlers.set(topic, set);
      const pubsub = this.libp2p.services.pubsub;
      pubsub.topicValidators.set(topic, (_peer, msg) => this.validate(msg));
      pubsub.subscribe(topic);
    }
    set.add(handler);
    return () => {
      const s = this.handlers.get(topic);
      if (s == null || !s.delete(handler) || s.size > 0) return;
      this.handlers.delete(topic);
      if (this.stopping) return;
      this.libp2p.services.pubsub.unsubscribe(topic);
      this.libp2p.services.pubsub.topicValidators.delete(topic);
    };
  }

  private flush(): void {
    if (this.flushTimer != null) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }
    if (this.queues.size === 0) return;
    const work: Array<[string, Uint8Array[]]> = [];
    for (const [topic, q] of this.queues) work.push([topic, packBatches(q)]);
    this.queues.clear();
    // one chain for all publishes keeps a sender's batches in publish order
    this.publishChain = this.publishChain.then(async () => {
      for (const [topic, batches] of work) {
        for (const batch of batches) {
          try {
            await this.libp2p.services.pubsub.publish(topic, batch);
            const s = this.stat(topic);
            s.messagesOut++;
            s.bytesOut += batch.length;
          } catch (err) {
            this.counters.publishErrors++;
            this.log.warn({ topic, bytes: batch.length, ...errInfo(err) }, 'gossip: publish failed');
          }
        }
      }
    });
  }

  private validate(msg: Message): TopicValidatorResult {
    if (msg.data.length > MAX_MESSAGE_BYTES) {
      this.dropped.oversized++;
      return TopicValidatorResult.Reject;
    }
    const r = decodeBatch(msg.data);
    if (!r.ok) {
      this.dropped[r.reason]++;
      this.log.debug?.({ topic: msg.topic, reason: r.reason }, 'gossip: dropped batch');
      return TopicValidatorResult.Reject;
    }
    return TopicValidatorResult.Accept;
  }

  private onMessage(msg: Message): void {
    const set = this.handlers.get(msg.topic);
    if (set == null || set.size === 0) return;
    const r = decodeBatch(msg.data);
    if (!r.ok) {
      // validators normally reject these first; count anyway if one slips through
      this.dropped[r.reason]++;
      return;
    }
    const from = msg.type === 'signed' ? msg.from.toString() : '';
    const s = this.stat(msg.topic);
    s.messagesIn++;
    s.bytesIn += msg.data.length;
    s.payloadsIn += r.payloads.length;
    for (const payload of r.payloads) {
      for (const h of set) {
        try {
          h(payload, from);
        } catch (err) {
          this.dropped.handler_error++;
          this.log.warn({ topic: msg.topic, from, ...errInfo(err) }, 'gossip: topic handler threw');
        }
      }
    }
  }

  private stat(topic: string): TopicStats {
    let s = this.topicStats.get(topic);
    if (s == null) {
      s = { messagesIn: 0, messagesOut: 0, payloadsIn: 0, payloadsOut: 0, bytesIn: 0, bytesOut: 0 };
      this.topicStats.set(topic, s);
    }
    return s;
  }

  // ---------------------------------------------------------------- connections

  /**
   * Never throws: the arguments come from (authenticated but possibly buggy) member metadata. A
   * malformed peer id or multiaddr, or one whose /p2p/ part names another peer, is logged, counted
   * (`dials.rejected`) and ignored.
   */
  connect(peerId: string, multiaddr: string): void {
    if (this.stopping || peerId === this.peerId) return;
    let pid: PeerId;
    let addr: Multiaddr;
    try {
      pid = peerIdFromString(peerId);
      addr = parseMultiaddr(multiaddr);
      const p2p = addr.getComponents().find((c) => c.name === 'p2p');
      if (p2p == null) addr = addr.encapsulate(`/p2p/${peerId}`);
      else if (p2p.value !== peerId) throw new Error('the multiaddr names another peer');
    } catch (err) {
      this.counters.connectRejected++;
      this.log.warn(
        { peer: peerId, multiaddr, ...errInfo(err) },
        'gossip: connect() ignored, bad peer address',
      );
      return;
    }

    this.refused.delete(peerId);
    if (this.faultHosts !== null) this.faultHosts.set(peerId, hostOfAddress(multiaddr));
    const existing = this.wanted.get(peerId);
    if (existing != null) {
      if (existing.addr.equals(addr)) return;
      existing.addr = addr;
      existing.attempt = 0;
      if (!this.isConnected(peerId)) this.scheduleDial(existing, 0);
      return;
    }
    const w: Wanted = {
      id: peerId,
      peerId: pid,
      addr,
      attempt: 0,
      timer: null,
      dialing: null,
      connectedAt: 0,
    };
    this.wanted.set(peerId, w);
    this.libp2p.peerStore
      .merge(pid, {
        multiaddrs: [addr.decapsulateCode(421)],
        tags: { [WANTED_TAG]: { value: WANTED_TAG_VALUE } },
      })
      .catch((err: unknown) =>
        this.log.warn({ peer: peerId, ...errInfo(err) }, 'gossip: peer store update failed'),
      );
    if (!this.isConnected(peerId)) this.scheduleDial(w, 0);
  }

  hangUp(peerId: string): void {
    const w = this.wanted.get(peerId);
    if (w != null) {
      this.wanted.delete(peerId);
      if (w.timer != null) clearTimeout(w.timer);
      w.dialing?.abort();
    }
    if (this.stopping || peerId === this.peerId) return;
    let pid: PeerId;
    try {
      pid = w?.peerId ?? peerIdFromString(peerId);
    } catch {
      return;
    }
    this.refused.add(peerId);
    if (this.refused.size > MAX_REFUSED) {
      const oldest = this.refused.values().next().value;
      if (oldest !== undefined) this.refused.delete(oldest);
    }
    this.libp2p.peerStore
      .merge(pid, { tags: { [WANTED_TAG]: undefined } })
      .catch((err: unknown) => this.log.debug?.({ peer: peerId, ...errInfo(err) }, 'gossip: untag failed'));
    this.libp2p
      .hangUp(pid)
      .catch((err: unknown) => this.log.debug?.({ peer: peerId, ...errInfo(err) }, 'gossip: hang-up failed'));
  }

  connectedPeers(): string[] {
    return this.libp2p.getPeers().map((p) => p.toString());
  }

  /**
   * `handler` runs whenever a peer tells this node it subscribed to `topic` (a new connection, a
   * reconnection): from then on this node's publications on the topic reach it (flood publish).
   */
  onPeerSubscribed(topic: string, handler: (peerId: string) => void): () => void {
    const pubsub = this.libp2p.services.pubsub;
    const listener = (evt: CustomEvent<SubscriptionChangeData>): void => {
      if (this.stopping) return;
      if (!evt.detail.subscriptions.some((s) => s.topic === topic && s.subscribe)) return;
      try {
        handler(evt.detail.peerId.toString());
      } catch (err) {
        this.log.warn({ topic, ...errInfo(err) }, 'gossip: onPeerSubscribed handler threw');
      }
    };
    pubsub.addEventListener('subscription-change', listener);
    return () => pubsub.removeEventListener('subscription-change', listener);
  }

  onPeerDisconnected(handler: (peerId: string) => void): () => void {
    this.disconnectHandlers.add(handler);
    return () => {
      this.disconnectHandlers.delete(handler);
    };
  }

  private isConnected(peerId: string): boolean {
    return this.libp2p.getConnections(peerIdFromString(peerId)).some((c) => c.status === 'open');
  }

  private scheduleDial(w: Wanted, delayMs: number): void {
    if (this.stopping || this.wanted.get(w.id) !== w) return;
    if (w.timer != null) clearTimeout(w.timer);
    w.timer = setTimeout(() => {
      w.timer = null;
      void this.dialOnce(w);
    }, delayMs);
    w.timer.unref();
  }

  private async dialOnce(w: Wanted): Promise<void> {
    if (this.stopping || this.wanted.get(w.id) !== w || w.dialing != null) return;
    if (this.isConnected(w.id)) return;
    const ac = new AbortController();
    w.dialing = ac;
    this.counters.dialAttempts++;
    try {
      await this.libp2p.dial(w.addr, {
        signal: AbortSignal.any([ac.signal, AbortSignal.timeout(DIAL_TIMEOUT_MS)]),
      });
      this.log.debug?.({ peer: w.id }, 'gossip: dialled');
    } catch (err) {
      this.counters.dialFailures++;
      const delay = this.backoff(w);
      w.attempt = Math.min(w.attempt + 1, 16);
      if (this.wanted.get(w.id) === w && !this.stopping) {
        this.log.debug?.({ peer: w.id, retryInMs: delay, ...errInfo(err) }, 'gossip: dial failed');
      }
      w.dialing = null;
      this.scheduleDial(w, delay);
    } finally {
      w.dialing = null;
    }
  }

  /** 250 ms · 2^attempt, capped at 10 s, ±20 % jitter */
  private backoff(w: Wanted): number {
    const delay = Math.min(REDIAL_MAX_MS, REDIAL_MIN_MS * 2 ** w.attempt);
    return Math.round(delay * (0.8 + Math.random() * 0.4));
  }

  /** Safety net: a wanted peer that is neither connected nor being dialled gets a dial scheduled. */
  private checkWanted(): void {
    if (this.stopping) return;
    for (const w of this.wanted.values()) {
      if (w.timer == null && w.dialing == null && !this.isConnected(w.id)) this.scheduleDial(w, 0);
    }
  }

  /** fault injection: closes the open connections to peers whose host is now blocked */
  private closeBlocked(faults: MeshFaults): void {
    if (this.stopping) return;
    for (const conn of this.libp2p.getConnections()) {
      const host = this.faultHosts?.get(conn.remotePeer.toString());
      if (!faults.isBlocked(conn.remoteAddr.toString()) && (host === undefined || !faults.isBlocked(host))) {
        continue;
      }
      this.log.info(
        { peer: conn.remotePeer.toString() },
        'gossip: closing a connection blocked by mesh faults',
      );
      try {
        conn.abort(new Error('blocked by injected mesh faults'));
      } catch (err) {
        this.log.debug?.({ ...errInfo(err) }, 'gossip: abort of a blocked connection failed');
      }
    }
  }

  // ---------------------------------------------------------------- streams

  handle(name: string, handler: (ch: Channel, from: string) => Promise<void>): void {
    const protocol = GossipNode.protocolOf(name);
    this.libp2p
      .handle(
        protocol,
        (stream, connection) => {
          this.counters.streamsAccepted++;
          const ch = new StreamChannel(stream, { maxFrameBytes: this.maxFrameBytes });
          const from = connection.remotePeer.toString();
          void (async () => {
            try {
              await handler(ch, from);
              await ch.close();
            } catch (err) {
              this.counters.streamHandlerErrors++;
              this.log.warn({ protocol, from, ...errInfo(err) }, 'gossip: stream handler failed');
              ch.abort(err instanceof Error ? err : new Error(String(err)));
            }
          })();
        },
        { maxInboundStreams: 32, force: true },
      )
      .catch((err: unknown) => this.log.warn({ protocol, ...errInfo(err) }, 'gossip: handle() failed'));
  }

  async open(peerId: string, name: string): Promise<Channel> {
    const protocol = GossipNode.protocolOf(name);
    try {
      const stream = await this.libp2p.dialProtocol(peerIdFromString(peerId), protocol, {
        signal: AbortSignal.timeout(OPEN_TIMEOUT_MS),
      });
      this.counters.streamsOpened++;
      return new StreamChannel(stream, { maxFrameBytes: this.maxFrameBytes });
    } catch (err) {
      this.counters.streamsFailed++;
      throw err;
    }
  }

  private static protocolOf(name: string): string {
    if (!PROTOCOL_NAME.test(name)) throw new Error(`invalid stream protocol name: ${JSON.stringify(name)}`);
    return `/smg/${name}/1`;
  }

  // ---------------------------------------------------------------- lifecycle

  stats(): GossipStats {
    const topics: Record<string, TopicStats> = {};
    for (const [t, s] of this.topicStats) topics[t] = { ...s };
    const c = this.counters;
    return {
      topics,
      dropped: { ...this.dropped },
      publishErrors: c.publishErrors,
      peersConnected: this.stopping ? 0 : this.libp2p.getPeers().length,
      peersWanted: this.wanted.size,
      dials: { attempts: c.dialAttempts, failures: c.dialFailures, rejected: c.connectRejected },
      streams: {
        opened: c.streamsOpened,
        failed: c.streamsFailed,
        accepted: c.streamsAccepted,
        handlerErrors: c.streamHandlerErrors,
      },
    };
  }

  stop(): Promise<void> {
    this.stopPromise ??= this.doStop();
    return this.stopPromise;
  }

  private async doStop(): Promise<void> {
    // flush what is queued (best effort), then stop everything that could fire later
    this.flush();
    this.stopping = true;
    this.offFaults?.();
    this.offFaults = null;
    if (this.watchdog != null) clearInterval(this.watchdog);
    this.watchdog = null;
    for (const w of this.wanted.values()) {
      if (w.timer != null) clearTimeout(w.timer);
      w.timer = null;
      w.dialing?.abort();
    }
    let waitTimer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.publishChain,
      new Promise<void>((resolve) => {
        waitTimer = setTimeout(resolve, STOP_FLUSH_WAIT_MS);
      }),
    ]);
    clearTimeout(waitTimer);
    try {
      await this.libp2p.stop();
    } catch (err) {
      this.log.warn(errInfo(err), 'gossip: libp2p stop failed');
    }
    this.log.info({ peerId: this.peerId }, 'gossip: stopped');
  }
}
