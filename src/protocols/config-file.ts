/**
 * The configuration files a user names on the command line (`--config`,
 * `--tenant-rate-limit-config`, `--priority-scheduler-config`): read with a size cap and parsed as
 * JSON or YAML in time linear in their size.
 *
 * The `yaml` package's own duplicate-key check compares every key of a mapping with every other
 * one, so a file of N keys parsed in O(N²) (40,000 keys took 11.5 s; a 5 MB file never finished).
 * It is switched off here and duplicates are found with one Set per mapping instead, in the same
 * walk that bounds how deeply a document may nest. A file is read at most up to the cap, so
 * `--config /dev/zero` is an error, not an endless read.
 *
 * Owns: reading and parsing. Never: what the document means (each loader validates its own keys),
 * logging, exiting.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { LineCounter, isAlias, isMap, isScalar, isSeq, parseDocument, type Node } from 'yaml';
import { jsonDepth } from './json-depth.js';

/** 1 MiB: far above any real configuration (the full flag set with 2,000 worker URLs is ~100 KB) */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;
/** no configuration nests deeper than a handful of levels; this bounds every recursive step after parsing */
export const MAX_CONFIG_DEPTH = 32;

export type ConfigFileProblem = 'unreadable' | 'too_large' | 'invalid';

/** why a configuration file was refused; the message is a complete sentence fragment for the user */
export class ConfigFileError extends Error {
  override readonly name = 'ConfigFileError';
  constructor(
    readonly problem: ConfigFileProblem,
    message: string,
  ) {
    super(message);
  }
}

/** the file's text, or a ConfigFileError when it cannot be read or exceeds `maxBytes` */
export function readConfigSource(path: string, maxBytes = MAX_CONFIG_FILE_BYTES): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ConfigFileError('unreadable', (err as Error).message);
  }
  try {
    // read one byte past the cap to tell "exactly at the cap" from "over it"; works for pipes too
    const buf = Buffer.allocUnsafe(maxBytes + 1);
    let size = 0;
    while (size < buf.length) {
      const n = readSync(fd, buf, size, buf.length - size, null);
      if (n === 0) break;
      size += n;
    }
    if (size > maxBytes) {
      throw new ConfigFileError(
        'too_large',
        `the file is larger than ${formatBytes(maxBytes)}, the limit for configuration files`,
      );
    }
    return buf.toString('utf8', 0, size);
  } catch (err) {
    if (err instanceof ConfigFileError) throw err;
    throw new ConfigFileError('unreadable', (err as Error).message);
  } finally {
    closeSync(fd);
  }
}

/**
 * Parses configuration text. JSON keeps JSON.parse's semantics (linear; a repeated key keeps its
 * last value); YAML refuses a repeated key. Both refuse nesting deeper than MAX_CONFIG_DEPTH.
 */
export function parseConfigSource(source: string, format: 'json' | 'yaml'): unknown {
  if (format === 'json') {
    let value: unknown;
    try {
      value = JSON.parse(source) as unknown;
    } catch (err) {
      throw new ConfigFileError('invalid', (err as Error).message);
    }
    if (jsonDepth(value, MAX_CONFIG_DEPTH) > MAX_CONFIG_DEPTH) throw tooDeep();
    return value;
  }
  const lines = new LineCounter();
  const doc = parseDocument(source, { uniqueKeys: false, lineCounter: lines, prettyErrors: false });
  const first = doc.errors[0];
  if (first) {
    // the parser's own recursion limit: report the cause, not the engine's stack message
    if (first.code === 'RESOURCE_EXHAUSTION') throw tooDeep();
    const at = lines.linePos(first.pos[0]);
    throw new ConfigFileError('invalid', `${firstLine(first.message)} (line ${at.line}, column ${at.col})`);
  }
  checkYamlNodes(doc.contents, lines);
  try {
    return doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (err) {
    // e.g. an alias expanded too often (a "billion laughs" document)
    throw new ConfigFileError('invalid', (err as Error).message);
  }
}

/** one pass over the YAML node tree: repeated keys and depth, without recursion */
function checkYamlNodes(root: Node | null, lines: LineCounter): void {
  if (!root) return;
  const stack: [Node, number][] = [[root, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop() as [Node, number];
    if (isAlias(node) || isScalar(node)) continue;
    if (depth >= MAX_CONFIG_DEPTH) throw tooDeep();
    if (isSeq(node)) {
      for (const item of node.items) if (item) stack.push([item as Node, depth + 1]);
    } else if (isMap(node)) {
      const seen = new Set<string>();
      for (const pair of node.items) {
        const key = pair.key as Node | null;
        if (isScalar(key)) {
          // keys become JS property names: `1` and "1" are the same setting once loaded
          const name = String(key.value);
          if (seen.has(name)) {
            const at = key.range ? ` (line ${lines.linePos(key.range[0]).line})` : '';
            throw new ConfigFileError('invalid', `duplicate key ${JSON.stringify(name)}${at}`);
          }
          seen.add(name);
        } else if (key) {
          stack.push([key, depth + 1]);
        }
        const value = pair.value as Node | null;
        if (value) stack.push([value, depth + 1]);
      }
    }
  }
}

function tooDeep(): ConfigFileError {
  return new ConfigFileError('invalid', `the document nests more than ${MAX_CONFIG_DEPTH} levels deep`);
}

function firstLine(message: string): string {
  const nl = message.indexOf('\n');
  return (nl < 0 ? message : message.slice(0, nl)).replace(/ at line \d+, column \d+:?$/, '');
}

function formatBytes(n: number): string {
  return n % (1024 * 1024) === 0 ? `${n / (1024 * 1024)} MiB` : `${n} bytes`;
}
