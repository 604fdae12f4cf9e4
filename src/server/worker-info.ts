/**
 * SMG's WorkerInfo JSON: the spec flattened (api_key withheld) plus runtime fields.
 *
 * `GET /workers` lists every worker (2,000 in SMG's scale test), so the list is written as JSON
 * text from a per-view cache: a view is immutable and replaced when its spec or status changes, so
 * only `load` and `job_status` (which change without a new view) are written per request.
 */
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

/** everything but `load` and `job_status`, in the order SMG writes the fields */
function staticInfo(w: WorkerView): Record<string, unknown> {
  const { api_key: _secret, ...spec } = w.spec;
  return {
    ...spec,
    models: spec.models.map((id) => ({ id })),
    id: w.id,
    url: w.url,
    model_id: w.models[0] ?? '*',
    is_healthy: w.status === 'ready',
    status: w.status,
  };
}

export function workerInfo(w: WorkerView, load: number, job?: JobStatus): WorkerInfo {
  const info = { ...staticInfo(w), load } as WorkerInfo;
  if (job && job.state !== 'completed') info.job_status = job;
  return info;
}

/** the JSON text of `staticInfo` without its closing brace, per view */
const staticJson = new WeakMap<WorkerView, string>();

/** `JSON.stringify(workerInfo(w, load, job))`, with the static part cached per view */
export function workerInfoJson(w: WorkerView, load: number, job?: JobStatus): string {
  let head = staticJson.get(w);
  if (head === undefined) {
    head = JSON.stringify(staticInfo(w)).slice(0, -1);
    staticJson.set(w, head);
  }
  const jobPart = job && job.state !== 'completed' ? `,"job_status":${JSON.stringify(job)}` : '';
  return `${head},"load":${JSON.stringify(load)}${jobPart}}`;
}
