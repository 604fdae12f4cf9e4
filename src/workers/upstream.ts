/**
 * One keep-alive undici Pool per worker URL: the single factory for upstream HTTP clients.
 * Pools are created on first use and closed when the worker leaves the registry.
 */
import { Pool } from 'undici';

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
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((p) => p.close().catch(() => undefined)));
  }
}

/** the origin (scheme://host:port) and base path of a worker URL */
export function splitWorkerUrl(url: string): { origin: string; basePath: string } {
  const u = new URL(url);
  return { origin: u.origin, basePath: u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '') };
}
