/**
 * A MeshCluster whose peers run with a fault file each (SMG_MESH_FAULTS, mesh/faults.ts) and can be
 * paused (SIGSTOP) and resumed (SIGCONT). Peers use their own loopback host (127.0.0.2, …) so a
 * fault file can tell them apart by host.
 */
import { writeFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import type { FaultSpec } from '../mesh/faults.js';
import { MeshCluster, type ClusterOptions, type MeshPeer } from '../src/testing/mesh-cluster.js';
import { SMG_ENTRY, spawnSmg, waitFor } from '../src/testing/processes.js';
import { spawnInNetns, type NetnsNetwork } from './netns.js';

export interface ChaosClusterOptions extends ClusterOptions {
  /** give every peer a fault file (default true) */
  faults?: boolean;
  /** root mode: peer i runs in namespace netns.ns(i) at netns.peerIp(i) */
  netns?: NetnsNetwork;
}

export class ChaosCluster extends MeshCluster {
  private readonly paused = new Set<number>();
  private readonly withFaults: boolean;
  readonly netns: NetnsNetwork | undefined;

  constructor(size: number, opts: ChaosClusterOptions = {}) {
    const hosts =
      opts.hosts ??
      Array.from({ length: size }, (_, i) => (opts.netns ? opts.netns.peerIp(i) : `127.0.0.${i + 2}`));
    super(size, { ...opts, hosts });
    this.withFaults = opts.faults !== false;
    this.netns = opts.netns;
  }

  /** in root mode every peer has a namespace of its own, so every peer uses the same fixed ports */
  override async start(): Promise<MeshPeer[]> {
    if (!this.netns) return super.start();
    for (let i = 0; i < this.size; i++) {
      this.specs.push({
        name: `peer-${i + 1}`,
        port: 8000,
        promPort: 9000,
        meshPort: 7946,
        dataDir: path.join(this.root, `peer-${i + 1}`),
        host: this.netns.peerIp(i),
      });
    }
    return Promise.all(this.specs.map((_, i) => this.startPeer(i)));
  }

  faultFile(i: number): string {
    return path.join(this.root, `faults-peer-${i + 1}.json`);
  }

  /** atomically replaces peer i's fault file (the peer polls it every 100 ms) */
  writeFaults(i: number, spec: Partial<FaultSpec>): void {
    const file = this.faultFile(i);
    writeFileSync(`${file}.tmp`, JSON.stringify(spec));
    renameSync(`${file}.tmp`, file);
  }

  clearFaults(): void {
    for (let i = 0; i < this.size; i++) this.writeFaults(i, {});
  }

  /** (re)starts peer i with its ports, data dir and fault file */
  override async startPeer(
    i: number,
    extra: string[] = [],
    opts: { seeds?: boolean } = {},
  ): Promise<MeshPeer> {
    const spec = this.specs[i];
    const env: NodeJS.ProcessEnv = {};
    if (this.withFaults) {
      this.writeFaults(i, {});
      env.SMG_MESH_FAULTS = this.faultFile(i);
    }
    const args = [
      'launch',
      '--log-level',
      'warn',
      '--shutdown-grace-period-secs',
      '2',
      ...this.args(i, extra, opts),
    ];
    const proc = this.netns ? spawnInNetns(this.netns.ns(i), SMG_ENTRY, args, env) : spawnSmg(args, env);
    const url = `http://${spec.host}:${spec.port}`;
    await waitFor(
      async () => {
        const res = await fetch(`${url}/readiness`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        return res.status === 200;
      },
      60_000,
      `${spec.name} readiness`,
      proc,
    );
    const peer: MeshPeer = Object.assign(proc, {
      spec,
      url,
      metricsUrl: `http://${spec.host}:${spec.promPort}`,
    });
    this.peers[i] = peer;
    this.paused.delete(i);
    return peer;
  }

  pause(i: number): void {
    const pid = this.peer(i).child.pid;
    if (pid === undefined) throw new Error(`peer ${i + 1} has no pid`);
    process.kill(pid, 'SIGSTOP');
    this.paused.add(i);
  }

  resume(i: number): void {
    const pid = this.peers[i]?.child.pid;
    if (pid !== undefined) process.kill(pid, 'SIGCONT');
    this.paused.delete(i);
  }

  isPaused(i: number): boolean {
    return this.paused.has(i);
  }

  /** indexes of peers that run and are not paused */
  liveIndexes(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) {
      const p = this.peers[i];
      if (
        p !== undefined &&
        p.child.exitCode === null &&
        p.child.signalCode === null &&
        !this.paused.has(i)
      ) {
        out.push(i);
      }
    }
    return out;
  }

  /** every peer's URL, dead ones included: what a DNS round-robin name would resolve to */
  allUrls(): string[] {
    return this.specs.map((s) => `http://${s.host}:${s.port}`);
  }

  override async stop(): Promise<void> {
    for (const i of [...this.paused]) this.resume(i);
    await super.stop();
  }
}
