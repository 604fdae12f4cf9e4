/**
 * Real mesh peers for end-to-end tests, benchmarks and chaos runs: `smg launch --ha-mesh` child
 * processes on loopback, each with its own data dir, joined through seeds. A peer keeps its ports
 * and data dir across restarts, so a restart is the same node coming back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generateClusterKey } from '../../mesh/swim/keyring.js';
import { freePort, startGatewayProc, waitFor, type GatewayProc } from './processes.js';

export interface MeshStatusNode {
  name: string;
  address: string;
  status: 'alive' | 'suspect' | 'dead' | 'left';
  incarnation: number;
  connected: boolean;
  self: boolean;
}

export interface MeshStatus {
  node_name: string;
  node_count: number;
  nodes: MeshStatusNode[];
}

export interface PeerSpec {
  name: string;
  port: number;
  promPort: number;
  meshPort: number;
  dataDir: string;
  /** host (127.0.0.x) the peer's HTTP and mesh listeners bind */
  host: string;
}

export interface MeshPeer extends GatewayProc {
  spec: PeerSpec;
}

export interface ClusterOptions {
  /** base64 cluster key; default: a fresh one (use `insecure` for none) */
  key?: string;
  insecure?: boolean;
  /** flags for every peer */
  extra?: string[];
  /** flags for the first peer only (e.g. --worker-urls) */
  firstExtra?: string[];
  /** a directory to hold the peers' data dirs (default: a fresh temp dir) */
  root?: string;
  /** hosts per peer (default all 127.0.0.1) */
  hosts?: string[];
}

export class MeshCluster {
  readonly key: string;
  readonly root: string;
  readonly specs: PeerSpec[] = [];
  readonly peers: (MeshPeer | undefined)[] = [];
  private readonly ownRoot: boolean;

  constructor(
    readonly size: number,
    private readonly opts: ClusterOptions = {},
  ) {
    this.key = opts.key ?? generateClusterKey();
    this.ownRoot = opts.root === undefined;
    this.root = opts.root ?? mkdtempSync(path.join(tmpdir(), 'smg-mesh-'));
  }

  /** allocates ports and starts every peer at once; resolves when all are ready */
  async start(): Promise<MeshPeer[]> {
    for (let i = 0; i < this.size; i++) {
      const host = this.opts.hosts?.[i] ?? '127.0.0.1';
      this.specs.push({
        name: `peer-${i + 1}`,
        port: await freePort(host),
        promPort: await freePort(host),
        meshPort: await freePort(host),
        dataDir: path.join(this.root, `peer-${i + 1}`),
        host,
      });
    }
    return Promise.all(this.specs.map((_, i) => this.startPeer(i)));
  }

  seeds(): string {
    return this.specs.map((s) => `${s.host}:${s.meshPort}`).join(',');
  }

  /** peer i's flags; `seeds: false` leaves the seeds out (the peer must rejoin from its stored members) */
  args(i: number, extra: string[] = [], opts: { seeds?: boolean } = {}): string[] {
    const s = this.specs[i];
    return [
      '--host',
      s.host,
      '--port',
      String(s.port),
      '--prometheus-host',
      s.host,
      '--prometheus-port',
      String(s.promPort),
      '--ha-mesh',
      '--mesh-host',
      s.host,
      '--mesh-port',
      String(s.meshPort),
      '--mesh-node-name',
      s.name,
      '--data-dir',
      s.dataDir,
      ...(opts.seeds === false ? [] : ['--seeds', this.seeds()]),
      ...(this.opts.insecure ? ['--mesh-insecure'] : ['--mesh-cluster-key', this.key]),
      ...(this.opts.extra ?? []),
      ...(i === 0 ? (this.opts.firstExtra ?? []) : []),
      ...extra,
    ];
  }

  /** (re)starts peer i with its ports and data dir */
  async startPeer(i: number, extra: string[] = [], opts: { seeds?: boolean } = {}): Promise<MeshPeer> {
    // many peers starting at once on a small machine take a while to load
    const gw = await startGatewayProc(this.args(i, extra, opts), { readyTimeoutMs: 60_000 });
    const peer = Object.assign(gw, {
      spec: this.specs[i],
      url: `http://${this.specs[i].host}:${this.specs[i].port}`,
    });
    this.peers[i] = peer;
    return peer;
  }

  peer(i: number): MeshPeer {
    const p = this.peers[i];
    if (!p) throw new Error(`peer ${i + 1} is not running`);
    return p;
  }

  running(): MeshPeer[] {
    return this.peers.filter((p): p is MeshPeer => p !== undefined && p.child.exitCode === null);
  }

  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.peers[i];
    this.peers[i] = undefined;
    await p?.stop(signal);
  }

  /** waits until every running peer sees exactly the running peers alive */
  async waitConverged(timeoutMs = 30_000): Promise<void> {
    await waitFor(
      async () => {
        const names = this.running()
          .map((p) => p.spec.name)
          .sort();
        for (const p of this.running()) {
          const st = await meshStatus(p.url);
          const alive = st.nodes
            .filter((n) => n.status === 'alive')
            .map((n) => n.name)
            .sort();
          if (alive.join() !== names.join()) return false;
        }
        return true;
      },
      timeoutMs,
      'mesh convergence',
    );
  }

  /** stops every running peer (SIGTERM) and keeps their data dirs, so peers can restart from them */
  async stopPeers(): Promise<void> {
    await Promise.all(this.running().map((p) => p.stop()));
    this.peers.length = 0;
  }

  /** stops every peer and removes the data dirs (when the cluster created their root) */
  async stop(): Promise<void> {
    await this.stopPeers();
    if (this.ownRoot) rmSync(this.root, { recursive: true, force: true });
  }
}

export async function meshStatus(url: string): Promise<MeshStatus> {
  const res = await fetch(`${url}/mesh/status`, { signal: AbortSignal.timeout(2000) });
  if (res.status !== 200) throw new Error(`GET /mesh/status: ${res.status}`);
  return (await res.json()) as MeshStatus;
}

/** the state `url` reports for member `name` (undefined if unknown) */
export async function memberState(url: string, name: string): Promise<MeshStatusNode['status'] | undefined> {
  return (await meshStatus(url)).nodes.find((n) => n.name === name)?.status;
}

export async function workerUrls(url: string): Promise<string[]> {
  const res = await fetch(`${url}/workers`, { signal: AbortSignal.timeout(2000) });
  const body = (await res.json()) as { workers: { url: string }[] };
  return body.workers.map((w) => w.url).sort();
}
