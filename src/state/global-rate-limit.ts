/**
 * Where the cluster-wide request rate limit (`/mesh/rate-limit`) lives: registry config key
 * `global_rate_limit`, the hex of `{"limit_per_second":N}` like every /mesh/config value.
 * Shared by admission (src/server/admission/global-limit.ts) and the mesh, which gossips the
 * global usage only while a limit is set.
 */
import type { RegistryDoc } from './registry-doc.js';

export const GLOBAL_RATE_LIMIT_CONFIG_KEY = 'global_rate_limit';
/** the one key of `Replica.globalRate` */
export const GLOBAL_RATE_KEY = 'global';

/** the registry config value for `limit` (hex of its JSON, as /mesh/config stores values) */
export function encodeGlobalRateLimit(limit: number): string {
  return Buffer.from(JSON.stringify({ limit_per_second: limit }), 'utf8').toString('hex');
}

/** the limit in a stored config value; 0 (unlimited) when absent or unreadable */
export function decodeGlobalRateLimit(hex: string | undefined): number {
  if (hex === undefined || hex.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(hex)) return 0;
  try {
    const v = (JSON.parse(Buffer.from(hex, 'hex').toString('utf8')) as { limit_per_second?: unknown })
      ?.limit_per_second;
    return typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : 0;
  } catch {
    return 0;
  }
}

/** the limit the registry document holds now (0: unlimited) */
export function readGlobalRateLimit(doc: RegistryDoc): number {
  return decodeGlobalRateLimit(doc.config().get(GLOBAL_RATE_LIMIT_CONFIG_KEY));
}
