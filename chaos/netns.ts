/**
 * Root mode of the chaos runner: every peer runs in its own network namespace, joined to the
 * harness by a veth pair on a bridge (10.231.K.0/24, the bridge is .1, peer i is .(10+i)). A
 * partition is then made by the kernel: blackhole routes to the other side's addresses inside each
 * namespace (silently dropped, like a cut link), healed by deleting them. Only the peers' traffic
 * to each other is cut; the harness (on the bridge address) still reaches every peer.
 *
 * Packet loss and latency would be `tc qdisc … netem`; when the kernel has no netem (as in some
 * containers) the `loss` scenario falls back to the fault file (mesh/faults.ts), and says so.
 */
import { execFileSync, spawn } from 'node:child_process';
import { trackProcess, type Proc } from '../src/testing/processes.js';

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
}

/** are we root with working `ip netns`? */
export function netnsAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    ip(['netns', 'list']);
    return true;
  } catch {
    return false;
  }
}

export class NetnsNetwork {
  readonly id: string;
  readonly subnet: number;
  readonly bridge: string;
  readonly hostIp: string;
  private readonly created: { bridge: boolean; ns: string[] } = { bridge: false, ns: [] };
  netem = false;

  constructor(readonly size: number) {
    this.id = Math.floor(Math.random() * 36 ** 4)
      .toString(36)
      .padStart(4, '0');
    this.subnet = 1 + Math.floor(Math.random() * 250);
    this.bridge = `smgc${this.id}br`;
    this.hostIp = `10.231.${this.subnet}.1`;
  }

  ns(i: number): string {
    return `smgc-${this.id}-${i}`;
  }

  peerIp(i: number): string {
    return `10.231.${this.subnet}.${10 + i}`;
  }

  /** creates the bridge, the namespaces and the veth pairs; throws (after cleaning up) on failure */
  setup(): void {
    try {
      ip(['link', 'add', this.bridge, 'type', 'bridge']);
      this.created.bridge = true;
      ip(['addr', 'add', `${this.hostIp}/24`, 'dev', this.bridge]);
      ip(['link', 'set', this.bridge, 'up']);
      for (let i = 0; i < this.size; i++) {
        const ns = this.ns(i);
        const veth = `smgc${this.id}v${i}`;
        ip(['netns', 'add', ns]);
        this.created.ns.push(ns);
        ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
        ip(['link', 'set', veth, 'master', this.bridge]);
        ip(['link', 'set', veth, 'up']);
        ip(['-n', ns, 'addr', 'add', `${this.peerIp(i)}/24`, 'dev', 'eth0']);
        ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
        ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      }
      try {
        execFileSync(
          'ip',
          ['netns', 'exec', this.ns(0), 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem'],
          {
            stdio: 'ignore',
            timeout: 5000,
          },
        );
        execFileSync('ip', ['netns', 'exec', this.ns(0), 'tc', 'qdisc', 'del', 'dev', 'lo', 'root'], {
          stdio: 'ignore',
          timeout: 5000,
        });
        this.netem = true;
      } catch {
        this.netem = false;
      }
    } catch (err) {
      this.teardown();
      throw err;
    }
  }

  /** cuts every path between side a and side b (both directions) with blackhole routes */
  partition(a: number[], b: number[]): void {
    for (const i of a)
      for (const j of b) ip(['-n', this.ns(i), 'route', 'add', 'blackhole', `${this.peerIp(j)}/32`]);
    for (const j of b)
      for (const i of a) ip(['-n', this.ns(j), 'route', 'add', 'blackhole', `${this.peerIp(i)}/32`]);
  }

  /** removes every blackhole route */
  heal(): void {
    for (let i = 0; i < this.size; i++) {
      try {
        ip(['-n', this.ns(i), 'route', 'flush', 'type', 'blackhole']);
      } catch {
        // nothing to flush
      }
    }
  }

  /** netem loss and delay on every peer's link (only when the kernel has netem) */
  impair(lossPercent: number, delayMs: number): void {
    for (let i = 0; i < this.size; i++) {
      execFileSync(
        'ip',
        [
          'netns',
          'exec',
          this.ns(i),
          'tc',
          'qdisc',
          'add',
          'dev',
          'eth0',
          'root',
          'netem',
          'loss',
          `${lossPercent}%`,
          'delay',
          `${delayMs}ms`,
        ],
        { stdio: 'ignore', timeout: 5000 },
      );
    }
  }

  unimpair(): void {
    for (let i = 0; i < this.size; i++) {
      try {
        execFileSync('ip', ['netns', 'exec', this.ns(i), 'tc', 'qdisc', 'del', 'dev', 'eth0', 'root'], {
          stdio: 'ignore',
          timeout: 5000,
        });
      } catch {
        // no qdisc
      }
    }
  }

  teardown(): void {
    for (const ns of this.created.ns.splice(0)) {
      try {
        ip(['netns', 'del', ns]); // takes its veth end, and so the pair, with it
      } catch {
        // already gone
      }
    }
    if (this.created.bridge) {
      try {
        ip(['link', 'del', this.bridge]);
      } catch {
        // already gone
      }
      this.created.bridge = false;
    }
  }
}

const spawned = new Set<Proc>();

/** stops every process spawnInNetns started that still runs */
export async function stopNetnsProcs(): Promise<void> {
  await Promise.all([...spawned].map((p) => p.stop()));
}

/** spawns `node <entry> …args` inside namespace `ns` (ip netns exec execs: the PID is node's) */
export function spawnInNetns(ns: string, entry: string, args: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, entry, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  return trackProcess(child, spawned);
}
