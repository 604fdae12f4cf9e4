/**
 * The single factory for upstream HTTP clients:
 *  - `get(origin)`: one keep-alive undici Pool per worker origin for proxied traffic, created on
 *    first use and closed when the worker leaves the registry;
 *  - `control()`: one shared Agent for the gateway's own sporadic calls to workers (health probes,
 *    model discovery, load polls). Its per-origin client (one connection) lives only as long as that
 *    connection: engines close idle connections after a few seconds, so a probe every interval
 *    reconnects anyway, and 2,000 workers probed (most never routed to, or unreachable) hold no
 *    Pool each (16 KB of queue apiece) and no sockets between probes.
 */
import { Agent, Pool, type Dispatcher } from 'undici';

export interface UpstreamOptions {
  /** upstream request timeout (headers and body), ms: --request-timeout-secs */
  requestTimeoutMs: number;
  /** TCP connect timeout, ms (SMG: 10 s) */
  connectTimeoutMs?: number;
  /** idle keep-alive, ms (SMG: 50 s) */
  keepAliveMs?: number;
  /** max connections per worker */
  connections?: number;
  /** the gateway's `--api-key`: the bearer for workers that have no `api_key` of their own */
  defaultApiKey?: string;
}

export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();
  private controlAgent: Agent | undefined;

  constructor(private readonly opts: UpstreamOptions) {}

  /** `Authorization` for calls to a worker: its own key, else the gateway's `--api-key` */
  authHeaders(spec: { api_key?: string }): Record<string, string> {
    const key = spec.api_key ?? this.opts.defaultApiKey;
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  get(origin: string): Pool {
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, {
        connections: this.opts.connections ?? 256,
        pipelining: 1,
        keepAliveTimeout: this.opts.keepAliveMs ?? 50_000,
        keepAliveMaxTimeout: Math.max(this.opts.keepAliveMs ?? 50_000, 60_000),
        headersTimeout: this.opts.requestTimeoutMs,
        bodyTimeout: this.opts.requestTimeoutMs,
        connect: {
          timeout: this.opts.connectTimeoutMs ?? 10_000,
          keepAlive: true,
          keepAliveInitialDelay: 30_000,
        },
      });
      // a pool error surfaces on the request that hit it; never as an unhandled event
      pool.on('connectionError', () => undefined);
      this.pools.set(origin, pool);
    }
    return pool;
  }

  /** the dispatcher for probes, discovery and load polls (see the module comment) */
  control(): Dispatcher {
    if (!this.controlAgent) {
      this.controlAgent = new Agent({
        connections: 1,
        pipelining: 1,
        headersTimeout: this.opts.requestTimeoutMs,
        bodyTimeout: this.opts.requestTimeoutMs,
        connect: { timeout: this.opts.connectTimeoutMs ?? 10_000 },
      });
      // an error surfaces on the request that hit it; never as an unhandled event
      this.controlAgent.on('connectionError', () => undefined);
    }
    return this.controlAgent;
  }

  /** open upstream connections over all pools */
  connections(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.stats.connected;
    return n;
  }

  async close(origin: string): Promise<void> {
    const pool = this.pools.get(origin);
    if (!pool) return;
    this.pools.delete(origin);
    await pool.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const all: Dispatcher[] = [...this.pools.values()];
    if (this.controlAgent) all.push(this.controlAgent);
    this.pools.clear();
    this.controlAgent = undefined;
    await Promise.all(all.map((p) => p.close().catch(() => undefined)));
  }
}

/** the origin (scheme://host:port) and base path of a worker URL */
export function splitWorkerUrl(url: string): { origin: string; basePath: string } {
  const u = new URL(url);
  return { origin: u.origin, basePath: u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '') };
}
