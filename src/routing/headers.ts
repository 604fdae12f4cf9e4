/**
 * Request header reads shared by the header-driven policies. Headers arrive lower-cased; a value
 * may repeat (string[]), in which case the first non-empty one counts. Never throws.
 */
import type { HeaderValue, RouteRequest } from './types.js';

export const ROUTING_KEY_HEADER = 'x-smg-routing-key';
export const TARGET_WORKER_HEADER = 'x-smg-target-worker';

/** the first non-empty value of a header, or undefined */
export function headerValue(headers: RouteRequest['headers'] | undefined, name: string): string | undefined {
  if (!headers) return undefined;
  const v: HeaderValue = headers[name];
  if (typeof v === 'string') return v.length > 0 ? v : undefined;
  if (Array.isArray(v)) {
    for (const s of v) if (typeof s === 'string' && s.length > 0) return s;
  }
  return undefined;
}

/** SMG's `X-SMG-Routing-Key`; an empty value counts as absent */
export function routingKey(req: RouteRequest): string | undefined {
  return headerValue(req.headers, ROUTING_KEY_HEADER);
}
