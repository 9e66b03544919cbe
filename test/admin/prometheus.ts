/**
 * A strict parser of the Prometheus text exposition format 0.0.4, for tests:
 * every sample must belong to a family announced by HELP and TYPE lines
 * before it; label values are unescaped.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(s: string): number {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  if (!/^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`bad sample value ${JSON.stringify(s)}`);
  return Number(s);
}

/** Parses `{a="x",b="y\"z"}` starting at `text[0] === '{'`; returns labels and the rest after `}`. */
function parseLabels(text: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1;
  for (;;) {
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`bad labels in ${text}`);
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw new Error(`bad label name ${JSON.stringify(name)}`);
    if (text[eq + 1] !== '"') throw new Error(`label value must be quoted in ${text}`);
    let j = eq + 2;
    let value = '';
    for (;;) {
      const c = text[j];
      if (c === undefined) throw new Error(`unterminated label value in ${text}`);
      if (c === '"') break;
      if (c === '\n') throw new Error('raw newline in a label value');
      if (c === '\\') {
        const n = text[j + 1];
        if (n === '\\') value += '\\';
        else if (n === '"') value += '"';
        else if (n === 'n') value += '\n';
        else throw new Error(`bad escape \\${n} in ${text}`);
        j += 2;
        continue;
      }
      value += c;
      j++;
    }
    if (Object.hasOwn(labels, name)) throw new Error(`duplicate label ${name}`);
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`expected , or } in ${text}`);
  }
}

/** The family a sample name belongs to (histograms: `_bucket`, `_sum`, `_count`). */
function familyOf(name: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(name);
  if (direct !== undefined) return direct;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const f = families.get(name.slice(0, -suffix.length));
      if (f !== undefined && (f.type === 'histogram' || f.type === 'summary')) return f;
    }
  }
  return undefined;
}

export function parsePrometheus(text: string): Map<string, Family> {
  if (text !== '' && !text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  let current: Family | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) {
      const rest = line.slice(7);
      const sp = rest.indexOf(' ');
      const name = sp < 0 ? rest : rest.slice(0, sp);
      if (!NAME.test(name)) throw new Error(`bad metric name ${name}`);
      if (families.has(name)) throw new Error(`HELP for ${name} twice`);
      current = { name, help: sp < 0 ? '' : rest.slice(sp + 1), type: 'untyped', samples: [] };
      families.set(name, current);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      const f = families.get(name!);
      if (f === undefined || f !== current) throw new Error(`TYPE for ${name} without HELP right before`);
      if (f.samples.length > 0) throw new Error(`TYPE for ${name} after samples`);
      if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(type!)) throw new Error(`bad type ${type}`);
      f.type = type as Family['type'];
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(line);
    if (m === null) throw new Error(`bad sample line ${JSON.stringify(line)}`);
    const name = m[1]!;
    let rest = m[2]!;
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest));
    if (!rest.startsWith(' ')) throw new Error(`bad sample line ${JSON.stringify(line)}`);
    const parts = rest.trim().split(' ');
    if (parts.length > 2) throw new Error(`bad sample line ${JSON.stringify(line)}`);
    const value = parseValue(parts[0]!);
    const f = familyOf(name, families);
    if (f === undefined) throw new Error(`sample ${name} before its HELP/TYPE`);
    if (f !== current) throw new Error(`sample ${name} not grouped with its family`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`duplicate sample ${key}`);
    seen.add(key);
    f.samples.push({ name, labels, value });
  }
  return families;
}

/** Checks every histogram: per label set, `le` increasing, counts non-decreasing, `+Inf` = `_count`, `_sum` present. */
export function checkHistograms(families: Map<string, Family>): void {
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    const groups = new Map<string, { buckets: Array<{ le: number; count: number }>; sum?: number; count?: number }>();
    for (const s of f.samples) {
      const { le, ...rest } = s.labels;
      const key = JSON.stringify(Object.entries(rest).sort());
      let g = groups.get(key);
      if (g === undefined) groups.set(key, (g = { buckets: [] }));
      if (s.name === `${f.name}_bucket`) {
        if (le === undefined) throw new Error(`${s.name} without le`);
        g.buckets.push({ le: parseValue(le), count: s.value });
      } else if (s.name === `${f.name}_sum`) g.sum = s.value;
      else if (s.name === `${f.name}_count`) g.count = s.value;
      else throw new Error(`unexpected sample ${s.name} in histogram ${f.name}`);
    }
    for (const [key, g] of groups) {
      if (g.buckets.length === 0) throw new Error(`${f.name}${key}: no buckets`);
      for (let i = 1; i < g.buckets.length; i++) {
        if (!(g.buckets[i]!.le > g.buckets[i - 1]!.le)) throw new Error(`${f.name}${key}: le not increasing`);
        if (g.buckets[i]!.count < g.buckets[i - 1]!.count) throw new Error(`${f.name}${key}: bucket counts decrease`);
      }
      const last = g.buckets.at(-1)!;
      if (last.le !== Infinity) throw new Error(`${f.name}${key}: no +Inf bucket`);
      if (g.count === undefined || g.sum === undefined) throw new Error(`${f.name}${key}: _sum or _count missing`);
      if (last.count !== g.count) throw new Error(`${f.name}${key}: +Inf bucket ${last.count} != _count ${g.count}`);
    }
  }
}
