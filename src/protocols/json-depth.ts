/**
 * How deeply a parsed JSON value nests, measured without recursion, so a hostile document (arrays
 * nested 100,000 deep parse fine with JSON.parse) can be refused before any recursive code sees it.
 */

/** the deepest an inference body may nest (serde_json's default recursion limit, as in SMG) */
export const MAX_BODY_DEPTH = 128;

/**
 * The depth of `value` (a scalar is 0, `[]` and `{}` are 1, `[[1]]` is 2), counting no further
 * than just past `limit`: the result is exact up to `limit` and `limit + 1` for anything deeper.
 * Allocation-light: two reusable stacks, no per-node arrays or tuples (it runs on inference bodies).
 */
export function jsonDepth(value: unknown, limit: number): number {
  if (typeof value !== 'object' || value === null) return 0;
  const nodes: object[] = [value];
  const depths: number[] = [1];
  let deepest = 1;
  while (nodes.length > 0) {
    const node = nodes.pop() as object;
    const depth = depths.pop() as number;
    if (depth > deepest) {
      deepest = depth;
      if (deepest > limit) return deepest;
    }
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) {
        const child: unknown = node[i];
        if (typeof child === 'object' && child !== null) {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    } else {
      const record = node as Record<string, unknown>;
      for (const key in record) {
        const child = record[key];
        if (typeof child === 'object' && child !== null) {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    }
  }
  return deepest;
}
