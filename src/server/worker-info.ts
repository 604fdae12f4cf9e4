/** SMG's WorkerInfo JSON: the spec flattened (api_key withheld) plus runtime fields. */
import type { JobStatus } from '../workers/manager.js';
import type { WorkerView } from '../state/registry.js';

export interface WorkerInfo extends Record<string, unknown> {
  id: string;
  url: string;
  model_id: string;
  is_healthy: boolean;
  status: string;
  load: number;
}

export function workerInfo(w: WorkerView, load: number, job?: JobStatus): WorkerInfo {
  const { api_key: _secret, ...spec } = w.spec;
  const info: WorkerInfo = {
    ...spec,
    models: spec.models.map((id) => ({ id })),
    id: w.id,
    url: w.url,
    model_id: w.models[0] ?? '*',
    is_healthy: w.status === 'ready',
    status: w.status,
    load,
  };
  if (job && job.state !== 'completed') info.job_status = job;
  return info;
}
