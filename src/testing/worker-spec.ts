/** A valid WorkerSpec for tests, built by the same parser the admin API uses. */
import { parseWorkerSpec } from '../protocols/worker-spec.js';
import type { WorkerSpec } from '../state/worker.js';

export function testWorkerSpec(url: string, models: string[] = ['m']): WorkerSpec {
  const parsed = parseWorkerSpec({ url, models });
  if ('error' in parsed) throw new Error(parsed.error);
  return parsed.spec;
}
