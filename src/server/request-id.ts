/**
 * Request ids (inventory §6.3): the first present header of `--request-id-headers`, else a new id
 * with SMG's per-route prefix and 24 random alphanumerics. Echoed as `x-request-id`.
 */
import type { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { requestIdPrefix, type Endpoint } from '../protocols/routing-text.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

// random bytes are drawn in batches: one syscall per ~170 ids instead of one per request
const POOL_SIZE = 4096;
let pool = randomBytes(POOL_SIZE);
let poolPos = 0;

function randomAlnum(n: number): string {
  if (poolPos + n > POOL_SIZE) {
    pool = randomBytes(POOL_SIZE);
    poolPos = 0;
  }
  let s = '';
  for (let i = 0; i < n; i++) s += ALPHABET[pool[poolPos++] % ALPHABET.length];
  return s;
}

export const ENDPOINT_BY_PATH: Record<string, Endpoint> = {
  '/v1/chat/completions': 'chat',
  '/v1/completions': 'completions',
  '/v1/embeddings': 'embeddings',
  '/generate': 'generate',
  '/v1/rerank': 'rerank',
  '/rerank': 'rerank',
  '/v1/classify': 'classify',
  '/v1/responses': 'responses',
  '/v1/messages': 'messages',
};

/** request ids are echoed into headers and logs: keep them short and printable */
const SAFE_ID = /^[\x21-\x7e]{1,256}$/;

export function makeRequestIdGenerator(headers: string[]) {
  return function genReqId(req: IncomingMessage): string {
    for (const h of headers) {
      const v = req.headers[h];
      const s = Array.isArray(v) ? v[0] : v;
      if (s && SAFE_ID.test(s)) return s;
    }
    const path = (req.url ?? '').split('?')[0];
    return requestIdPrefix(ENDPOINT_BY_PATH[path]) + randomAlnum(24);
  };
}
