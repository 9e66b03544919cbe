/**
 * Summarises V8 CPU profiles (`node --cpu-prof`, or the benchmark harness's
 * `--cpu-prof-dir`): the functions with the most self time, the most
 * inclusive time, and self time grouped by source file.
 *
 * `node --import tsx benchmarks/cpuprofile.ts FILE.cpuprofile|DIR … [--top N] [--json]`
 * (for a directory: its largest profile, which is the main thread's — tsx's
 * loader thread writes a small one next to it).
 *
 * @module
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { formatTable } from './util.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One function of a profile summary. */
export interface ProfileEntry {
  fn: string;
  where: string;
  selfMs: number;
  selfPct: number;
  totalMs: number;
  totalPct: number;
}

/** Summary of one profile. */
export interface ProfileSummary {
  /** Profiled wall time, ms. */
  wallMs: number;
  /** Sampled time that was not idle, ms. */
  busyMs: number;
  /** Functions by self time (idle excluded). */
  bySelf: ProfileEntry[];
  /** Functions by inclusive time. */
  byTotal: ProfileEntry[];
  /** Self time per source file (or pseudo-frame such as `(garbage collector)`). */
  byFile: Array<{ file: string; selfMs: number; selfPct: number }>;
}

function shortUrl(url: string): string {
  if (url === '') return '';
  const u = url.replace(/^file:\/\//, '');
  const i = u.search(/\/(src|benchmarks|node_modules)\//);
  return i >= 0 ? u.slice(i + 1) : u;
}

/** Summarises a parsed profile. */
export function summarizeProfile(profile: CpuProfile, top = 25): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const key = (n: ProfileNode): string => {
    const f = n.callFrame;
    return `${f.functionName || '(anonymous)'}\u0000${shortUrl(f.url)}:${f.lineNumber + 1}`;
  };
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const file = new Map<string, number>();
  let wall = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = (profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0) / 1000; // ms until the next sample
    wall += dt;
    let node = byId.get(profile.samples[i]!);
    if (node === undefined) continue;
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const k = key(node);
    self.set(k, (self.get(k) ?? 0) + dt);
    const f = node.callFrame.url === '' ? node.callFrame.functionName : shortUrl(node.callFrame.url);
    file.set(f, (file.get(f) ?? 0) + dt);
    const seen = new Set<string>();
    while (node !== undefined) {
      const kk = key(node);
      if (!seen.has(kk)) {
        seen.add(kk);
        total.set(kk, (total.get(kk) ?? 0) + dt);
      }
      const p = parent.get(node.id);
      node = p === undefined ? undefined : byId.get(p);
    }
  }
  const busy = wall - idle;
  const entry = (k: string): ProfileEntry => {
    const [fn, where] = k.split('\u0000') as [string, string];
    const s = self.get(k) ?? 0;
    const t = total.get(k) ?? 0;
    return {
      fn,
      where,
      selfMs: Math.round(s),
      selfPct: Math.round((1000 * s) / busy) / 10,
      totalMs: Math.round(t),
      totalPct: Math.round((1000 * t) / busy) / 10,
    };
  };
  const sortedBy = (m: Map<string, number>): string[] => [...m.entries()].sort((a, b) => b[1] - a[1]).map(([k]) => k);
  return {
    wallMs: Math.round(wall),
    busyMs: Math.round(busy),
    bySelf: sortedBy(self).slice(0, top).map(entry),
    byTotal: sortedBy(total)
      .filter((k) => !k.startsWith('(root)'))
      .slice(0, top)
      .map(entry),
    byFile: sortedBy(file)
      .slice(0, top)
      .map((f) => ({ file: f, selfMs: Math.round(file.get(f)!), selfPct: Math.round((1000 * file.get(f)!) / busy) / 10 })),
  };
}

/** `path` itself, or the largest `.cpuprofile` in directory `path`. */
export function mainThreadProfile(path: string): string {
  if (!statSync(path).isDirectory()) return path;
  const files = readdirSync(path)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(path, f))
    .sort((a, b) => statSync(b).size - statSync(a).size);
  if (files[0] === undefined) throw new Error(`no .cpuprofile in ${path}`);
  return files[0];
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  const { values, positionals } = parseArgs({ options: { top: { type: 'string' }, json: { type: 'boolean' } }, allowPositionals: true });
  for (const arg of positionals) {
    const path = mainThreadProfile(arg);
    const s = summarizeProfile(JSON.parse(readFileSync(path, 'utf8')) as CpuProfile, Number(values.top ?? 25));
    if (values.json === true) {
      console.log(JSON.stringify({ path, ...s }, null, 2));
      continue;
    }
    console.log(`\n${path}: wall ${s.wallMs} ms, busy ${s.busyMs} ms (${Math.round((100 * s.busyMs) / s.wallMs)} %)`);
    console.log('\nself time');
    console.log(formatTable(s.bySelf as unknown as Array<Record<string, unknown>>, ['selfMs', 'selfPct', 'fn', 'where']));
    console.log('\ninclusive time');
    console.log(formatTable(s.byTotal as unknown as Array<Record<string, unknown>>, ['totalMs', 'totalPct', 'fn', 'where']));
    console.log('\nself time by file');
    console.log(formatTable(s.byFile as unknown as Array<Record<string, unknown>>));
  }
}
