/**
 * One gateway node's place in the mesh: SWIM membership over UDP, libp2p gossip over TCP on the
 * same port number, the registry topic and its anti-entropy sessions, joining through seeds.
 *
 *   SWIM alive/suspect member ──► gossip.connect(its libp2p id, address)   (from member metadata)
 *   SWIM dead/left member     ──► gossip.hangUp, sync state forgotten
 *   libp2p connection lost    ──► swim.probeNow(member)                     (kill -9 seen at once)
 *   local registry change     ──► store (committed) ──► topic smg/registry/1 (batched ~50 ms)
 *   remote registry change    ──► replica ──► store
 *   each new peer, and one random peer every SYNC_INTERVAL_MS ──► Automerge sync session /smg/registry/1
 *   soft state (cache deltas, load, rate-limit slots, health)   ──► mesh/soft-state.ts
 *   each new peer ──► pull its prefix-cache index snapshot (/smg/cache/1)
 *
 * Seeds are `host:port`, resolved again (DNS) on every attempt; the node retries all seeds, and
 * the members it stored last time, with backoff until some member answers. It serves from its
 * restored state meanwhile.
 *
 * Owns: the SWIM node, the gossip node, their wiring, the join loop. Never: routing.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { MeshConfig } from '../src/cli/config-types.js';
import type { Logger } from '../src/observability/logger.js';
import { RegistryDocError } from '../src/state/registry-doc.js';
import type { Replica } from '../src/state/replica.js';
import type { NodeStore } from '../store/node-store.js';
import { meshFaultsFromEnv } from './faults.js';
import { GossipNode, type GossipStats } from './gossip/node.js';
import { answerRegistrySync, runRegistrySync } from './registry-sync.js';
import { SOFT_TOPICS, SoftState } from './soft-state.js';
import { Keyring } from './swim/keyring.js';
import type { Member, MemberState } from './swim/member.js';
import { SwimNode, type SwimStats } from './swim/swim.js';
import type { Clock } from './swim/transport.js';
import { UdpTransport, formatHostPort, parseHostPort, type UdpTransportStats } from './swim/udp-transport.js';

export const REGISTRY_TOPIC = 'smg/registry/1';
const REGISTRY_PROTOCOL = 'registry';
/** anti-entropy: a sync session with one random connected peer this often (and with every new one) */
const SYNC_INTERVAL_MS = 10_000;
const JOIN_BACKOFF_MIN_MS = 1_000;
const JOIN_BACKOFF_MAX_MS = 30_000;
const SAVE_MEMBERS_DELAY_MS = 1_000;
/**
 * A push-pull with one random dead (not left) member this often: after a partition both sides
 * have declared each other dead and would otherwise only meet again through a seed retry
 * (memberlist's "gossip to the dead" does the same)
 */
const DEAD_RETRY_MS = 5_000;
const MAX_UDP_PACKET_BYTES = 4096;
/** 8-byte send time (ms) in front of every registry change on the topic: apply lag metric */
const STAMP_BYTES = 8;

/** member metadata keys */
const META_PEER = 'p';
const META_ADDR = 'a';
const META_NODE = 'n';

export interface MeshRuntimeOptions {
  cfg: MeshConfig;
  replica: Replica;
  logger: Logger;
  /** protobuf libp2p key: from the store, or fresh for a node without one */
  libp2pKey: Uint8Array;
  /** this run's incarnation (stored and bumped at start) */
  incarnation: number;
  store?: NodeStore;
  /** override of SWIM timings (tests) */
  swim?: Partial<Omit<ConstructorParameters<typeof SwimNode>[0]['config'], 'name'>>;
}

export interface MeshNodeStatus {
  name: string;
  address: string;
  status: MemberState;
  incarnation: number;
  node_id?: string;
  peer_id?: string;
  connected: boolean;
  self: boolean;
}

export interface MeshCounters {
  swim: SwimStats;
  udp: UdpTransportStats;
  gossip: GossipStats;
  sync: { ok: number; failed: number; changed: number };
  registryApplied: number;
  registryRejected: number;
  joined: boolean;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** the address peers should use when bound to `host` (the first non-internal IPv4 for 0.0.0.0/::) */
export function advertiseHostFor(cfg: Pick<MeshConfig, 'host' | 'advertiseHost'>): string {
  if (cfg.advertiseHost !== undefined) return cfg.advertiseHost;
  if (cfg.host !== '0.0.0.0' && cfg.host !== '::') return cfg.host;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  throw new Error(
    `--mesh-host ${cfg.host} needs --mesh-advertise-host: no non-loopback IPv4 address found to advertise`,
  );
}

/** `host:port` seeds → `ip:port` for every address each name resolves to; unresolvable ones skipped */
export async function resolveSeeds(
  seeds: readonly string[],
  log?: (seed: string, err: string) => void,
): Promise<string[]> {
  const out = new Set<string>();
  await Promise.all(
    seeds.map(async (seed) => {
      const hp = parseHostPort(seed);
      if (!hp) return;
      const { host, port } = hp;
      if (isIP(host) !== 0) {
        out.add(formatHostPort(host, port));
        return;
      }
      try {
        for (const a of await lookup(host, { all: true })) out.add(formatHostPort(a.address, port));
      } catch (err) {
        log?.(seed, err instanceof Error ? err.message : String(err));
      }
    }),
  );
  return [...out].sort();
}

export class MeshRuntime {
  readonly name: string;
  readonly address: string;
  private joined = false;
  private closed = false;
  private leaving: Promise<void> | undefined;
  private joinTimer: NodeJS.Timeout | undefined;
  private syncTimer: NodeJS.Timeout | undefined;
  private saveTimer: NodeJS.Timeout | undefined;
  private deadTimer: NodeJS.Timeout | undefined;
  private readonly peerToMember = new Map<string, string>();
  private readonly syncing = new Set<string>();
  private readonly tally = { syncOk: 0, syncFailed: 0, syncChanged: 0, applied: 0, rejected: 0 };
  private readonly lagObservers: ((seconds: number) => void)[] = [];
  private readonly offs: (() => void)[] = [];
  /** cache deltas, cluster load, rate-limit slots, shared health probing */
  readonly soft: SoftState;

  private constructor(
    private readonly o: MeshRuntimeOptions,
    private readonly transport: UdpTransport,
    private readonly gossip: GossipNode,
    readonly swim: SwimNode,
  ) {
    this.name = swim.name;
    this.address = transport.localAddress;
    this.soft = new SoftState({
      gossip,
      replica: o.replica,
      ...(o.store && { store: o.store }),
      log: o.logger.child({ component: 'mesh' }),
    });
  }

  static async start(o: MeshRuntimeOptions): Promise<MeshRuntime> {
    const { cfg, logger } = o;
    const log = logger.child({ component: 'mesh' });
    const advertise = advertiseHostFor(cfg);
    const keyring =
      cfg.clusterKeys.length > 0
        ? Keyring.fromBase64(cfg.clusterKeys[0], cfg.clusterKeys.slice(1))
        : undefined;
    const transport = await UdpTransport.bind({
      host: cfg.host,
      port: cfg.port,
      advertiseAddress: formatHostPort(advertise, cfg.port),
      ...(keyring ? { keyring } : { insecure: true }),
      // SWIM never sends more than MAX_PACKET_BYTES (+ seal and envelope); anything bigger is hostile
      maxPacketBytes: MAX_UDP_PACKET_BYTES,
      logger: log,
      // chaos testing only: null unless SMG_MESH_FAULTS names a fault file (mesh/faults.ts)
      faults: meshFaultsFromEnv(process.env, log),
    });
    let gossip: GossipNode;
    try {
      gossip = await GossipNode.start({
        privateKey: o.libp2pKey,
        host: cfg.host,
        port: cfg.port,
        advertiseHost: advertise,
        ...(keyring && { clusterKey: keyring.primaryKey() }),
        // registry changes are rare admin writes: sent on the next tick, not after a 50 ms window
        // soft-state topics batch themselves (one encoded message per 50–100 ms flush)
        topicBatchMs: { [REGISTRY_TOPIC]: 0, ...Object.fromEntries(SOFT_TOPICS.map((t) => [t, 0])) },
        // only key holders can connect (private network), and every peer is trusted with the whole
        // registry anyway: per-message signatures would cost a signature per batch and a check per
        // receiver without keeping anyone out (without a key the mesh is loopback or --mesh-insecure)
        signMessages: false,
        logger: log,
        faults: transport.faults,
      });
    } catch (err) {
      await transport.close();
      throw err;
    }
    const swim = new SwimNode({
      transport,
      clock: realClock,
      random: Math.random,
      config: { ...o.swim, name: cfg.nodeName },
      meta: { [META_PEER]: gossip.peerId, [META_ADDR]: gossip.multiaddr, [META_NODE]: o.replica.nodeId },
      incarnation: o.incarnation,
    });
    const rt = new MeshRuntime(o, transport, gossip, swim);
    rt.wire(log);
    swim.start();
    rt.joinLoop(log, 0);
    log.info(
      { node: cfg.nodeName, address: transport.localAddress, peer_id: gossip.peerId, encrypted: !!keyring },
      'mesh started',
    );
    return rt;
  }

  private wire(log: Logger): void {
    const { replica } = this.o;
    this.offs.push(
      this.swim.onMemberChange((m, prev) => this.onMember(log, m, prev)),
      this.gossip.onPeerDisconnected((peerId) => {
        const name = this.peerToMember.get(peerId);
        if (name !== undefined && !this.closed) this.swim.probeNow(name);
      }),
      replica.onRegistryChanges((changes, source) => {
        if (source !== 'local' || this.closed) return;
        const stamp = Buffer.alloc(STAMP_BYTES);
        stamp.writeDoubleBE(Date.now(), 0);
        for (const c of changes) this.gossip.publish(REGISTRY_TOPIC, Buffer.concat([stamp, c]));
      }),
    );
    this.gossip.subscribe(REGISTRY_TOPIC, (payload) => this.onRegistryPayload(log, payload));
    this.gossip.handle(REGISTRY_PROTOCOL, async (ch, from) => {
      try {
        const r = await answerRegistrySync(replica, from, ch);
        this.tally.syncOk++;
        if (r.changed) this.tally.syncChanged++;
      } catch (err) {
        this.tally.syncFailed++;
        log.debug({ peer: from, err: (err as Error).message }, 'registry sync (answering) failed');
      }
    });
    // one random peer per round (like SWIM's push-pull): a missed change is repaired within a few
    // rounds, and each node runs ~2 sessions per interval whatever the cluster size
    const tick = (): void => {
      const peers = this.gossip.connectedPeers();
      if (peers.length > 0) void this.syncWith(log, peers[Math.floor(Math.random() * peers.length)]);
    };
    this.syncTimer = setInterval(tick, SYNC_INTERVAL_MS);
    this.syncTimer.unref();
    this.deadTimer = setInterval(() => this.retryDead(), DEAD_RETRY_MS);
    this.deadTimer.unref();
    this.soft.start();
  }

  private onRegistryPayload(log: Logger, payload: Uint8Array): void {
    if (payload.length <= STAMP_BYTES) {
      this.tally.rejected++;
      return;
    }
    const sentAt = Buffer.from(payload.buffer, payload.byteOffset, STAMP_BYTES).readDoubleBE(0);
    const change = payload.subarray(STAMP_BYTES);
    try {
      this.o.replica.applyRegistryChanges([change]);
      this.tally.applied++;
      if (Number.isFinite(sentAt)) {
        const lag = Math.max(0, Date.now() - sentAt) / 1000;
        for (const l of this.lagObservers) l(lag);
      }
    } catch (err) {
      this.tally.rejected++;
      if (!(err instanceof RegistryDocError))
        log.warn({ err: (err as Error).message }, 'registry change failed');
    }
  }

  private onMember(log: Logger, m: Member, prev: MemberState | undefined): void {
    if (m.name === this.name) return;
    this.soft.setMembers(
      this.swim
        .members()
        .filter((x) => (x.state === 'alive' || x.state === 'suspect') && x.meta[META_NODE] !== undefined)
        .map((x) => x.meta[META_NODE] as string),
    );
    const peerId = m.meta[META_PEER];
    const addr = m.meta[META_ADDR];
    if (m.state === 'alive' || m.state === 'suspect') {
      if (peerId && addr && peerId !== this.gossip.peerId) {
        this.peerToMember.set(peerId, m.name);
        const fresh = !this.gossip.connectedPeers().includes(peerId);
        this.gossip.connect(peerId, addr);
        // a (re)joining member: catch it up as soon as the connection is there (the prefix-cache
        // indexes are exchanged when it subscribes to the deltas: see SoftState)
        if (fresh && prev !== 'alive' && prev !== 'suspect')
          setTimeout(() => {
            void this.syncWith(log, peerId);
            if (this.closed) return;
            this.soft.republishOwn(true);
          }, 300).unref();
      }
      if (prev !== 'alive' && prev !== 'suspect' && m.state === 'alive') {
        this.joined = true;
        log.info({ member: m.name, address: m.address, incarnation: m.incarnation }, 'mesh member alive');
      }
    } else {
      const nodeId = m.meta[META_NODE];
      if (nodeId !== undefined && nodeId !== this.o.replica.nodeId) this.soft.memberGone(nodeId);
      if (peerId) {
        this.gossip.hangUp(peerId);
        this.peerToMember.delete(peerId);
      }
      if (prev !== m.state)
        log.warn({ member: m.name, address: m.address, state: m.state }, `mesh member ${m.state}`);
    }
    this.scheduleSaveMembers();
  }

  private async syncWith(log: Logger, peerId: string): Promise<void> {
    if (this.closed || this.syncing.has(peerId)) return;
    this.syncing.add(peerId);
    try {
      const ch = await this.gossip.open(peerId, REGISTRY_PROTOCOL);
      const r = await runRegistrySync(this.o.replica, peerId, ch);
      this.tally.syncOk++;
      if (r.changed) this.tally.syncChanged++;
    } catch (err) {
      this.tally.syncFailed++;
      log.debug({ peer: peerId, err: (err as Error).message }, 'registry sync failed');
    } finally {
      this.syncing.delete(peerId);
    }
  }

  private retryDead(): void {
    if (this.closed || this.leaving) return;
    const dead = this.swim.members().filter((m) => m.state === 'dead' && m.name !== this.name);
    if (dead.length === 0) return;
    const m = dead[Math.floor(Math.random() * dead.length)];
    // an answer carries its refutation (a higher incarnation): the member is alive again everywhere
    this.swim.join([m.address], { maxAttempts: 1, initialBackoffMs: 1_000 }).catch(() => undefined);
  }

  private scheduleSaveMembers(): void {
    const store = this.o.store;
    if (!store || this.saveTimer || this.closed) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      this.saveMembers();
    }, SAVE_MEMBERS_DELAY_MS);
    this.saveTimer.unref();
  }

  private saveMembers(): void {
    const store = this.o.store;
    if (!store) return;
    try {
      store.saveMembers(
        this.swim
          .members()
          .filter((m) => m.name !== this.name)
          .map((m) => ({
            name: m.name,
            address: m.address,
            incarnation: m.incarnation,
            state: m.state,
            meta: m.meta,
          })),
      );
    } catch {
      // closed store at shutdown: nothing to keep
    }
  }

  /** retries every seed (re-resolved) and the stored members with backoff until a member answers */
  private joinLoop(log: Logger, attempt: number): void {
    if (this.closed || this.leaving) return;
    const run = async (): Promise<void> => {
      if (this.aliveOthers() > 0) {
        this.joined = true;
        return; // somebody joined us meanwhile
      }
      const seeds = await resolveSeeds(this.o.cfg.seeds, (seed, err) =>
        log.warn({ seed, err }, 'mesh seed does not resolve'),
      );
      const stored = (this.o.store?.loadMembers() ?? [])
        .filter((m) => m.name !== this.name && m.state !== 'left')
        .map((m) => m.address);
      const targets = [...new Set([...seeds, ...stored])].filter((a) => a !== this.address);
      if (targets.length === 0) {
        if (this.o.cfg.seeds.length === 0) {
          log.info({}, 'no seeds and no stored members: this node starts the mesh');
          return;
        }
      } else {
        try {
          const via = await this.swim.join(targets, { maxAttempts: 1, initialBackoffMs: 1_000 });
          this.joined = true;
          log.info({ via, members: this.aliveOthers() + 1 }, 'joined the mesh');
          return;
        } catch {
          if (this.closed) return;
          if (attempt % 5 === 0)
            log.warn({ targets, attempt: attempt + 1 }, 'no mesh seed answered yet; retrying');
        }
      }
      const delay = Math.min(JOIN_BACKOFF_MAX_MS, JOIN_BACKOFF_MIN_MS * 2 ** Math.min(attempt, 10));
      this.joinTimer = setTimeout(() => this.joinLoop(log, attempt + 1), delay * (0.8 + 0.4 * Math.random()));
      this.joinTimer.unref();
    };
    run().catch((err: unknown) => log.error({ err: (err as Error).message }, 'mesh join loop failed'));
  }

  private aliveOthers(): number {
    let n = 0;
    for (const m of this.swim.members()) if (m.name !== this.name && m.state === 'alive') n++;
    return n;
  }

  /** observes the delay between a registry change's publication and its application here */
  onApplyLag(fn: (seconds: number) => void): void {
    this.lagObservers.push(fn);
  }

  status(): { node_name: string; node_count: number; nodes: MeshNodeStatus[] } {
    const connected = new Set(this.gossip.connectedPeers());
    const nodes = this.swim
      .members()
      .map((m): MeshNodeStatus => ({
        name: m.name,
        address: m.address,
        status: m.state,
        incarnation: m.incarnation,
        ...(m.meta[META_NODE] !== undefined && { node_id: m.meta[META_NODE] }),
        ...(m.meta[META_PEER] !== undefined && { peer_id: m.meta[META_PEER] }),
        connected: m.name === this.name || connected.has(m.meta[META_PEER] ?? ''),
        self: m.name === this.name,
      }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return {
      node_name: this.name,
      node_count: nodes.filter((n) => n.status === 'alive' || n.status === 'suspect').length,
      nodes,
    };
  }

  counters(): MeshCounters {
    return {
      swim: this.swim.stats(),
      udp: this.transport.stats(),
      gossip: this.gossip.stats(),
      sync: { ok: this.tally.syncOk, failed: this.tally.syncFailed, changed: this.tally.syncChanged },
      registryApplied: this.tally.applied,
      registryRejected: this.tally.rejected,
      joined: this.joined,
    };
  }

  get hasJoined(): boolean {
    return this.joined;
  }

  get isLeaving(): boolean {
    return this.leaving !== undefined;
  }

  /** graceful leave: peers see `left` (not `dead`); gossip and SWIM stop afterwards */
  leave(): Promise<void> {
    this.leaving ??= (async () => {
      if (this.joinTimer) clearTimeout(this.joinTimer);
      try {
        await this.swim.leave(3_000);
      } finally {
        this.saveMembers();
        await this.stop();
      }
    })();
    return this.leaving;
  }

  private async stop(): Promise<void> {
    if (this.closed) return;
    this.soft.stop();
    this.closed = true;
    for (const off of this.offs) off();
    if (this.syncTimer) clearInterval(this.syncTimer);
    if (this.deadTimer) clearInterval(this.deadTimer);
    if (this.saveTimer) clearTimeout(this.saveTimer);
    if (this.joinTimer) clearTimeout(this.joinTimer);
    await this.gossip.stop();
    await this.swim.shutdown();
  }
}
