/**
 * Renders the README's benchmark section from `benchmarks/results/latest.json`
 * and writes it between the `<!-- bench:start -->` / `<!-- bench:end -->`
 * markers of README.md:
 *
 *   node --import tsx scripts/bench-table.ts
 */
import { readFileSync, writeFileSync } from 'node:fs';

type Row = Record<string, unknown>;
interface Suite {
  machine: { date: string; cpus: number; cpuModel: string; node: string; loadAverage: number[]; commit?: string; childNodeArgs?: string };
  loadAverageAfter: number[];
  command: string;
  rows: Row[];
}

const root = new URL('../', import.meta.url);
const latest = JSON.parse(readFileSync(new URL('benchmarks/results/latest.json', root), 'utf8')) as { suites: Record<string, Suite> };

const columns: Record<string, [string, string][]> = {
  codec: [['benchmark', 'measure'], ['payloadBytes', 'payload B'], ['totalNs', 'ns/frame'], ['throughputGBps', 'GB/s'], ['payloadCopies', 'payload copies']],
  journal: [['target', 'target'], ['fsync', 'fsync'], ['recordBytes', 'record B'], ['opsPerSec', 'ops/s'], ['MBps', 'MB/s'], ['vsReference', '× pwrite']],
  replay: [['measure', 'measure'], ['mib', 'MiB'], ['seconds', 's'], ['mibPerSec', 'MiB/s'], ['ratio', 'ratio'], ['peakRssMiB', 'peak RSS MiB'], ['peakBufferedMiB', 'peak buffered MiB'], ['note', 'note']],
  write: [['workload', 'workload'], ['config', 'config'], ['MBps', 'MB/s'], ['iops', 'IOPS'], ['p50us', 'p50 µs'], ['p99us', 'p99 µs'], ['vsUnmirrored', '× unmirrored'], ['cpuUsPerOp', 'CPU µs/op'], ['failed', 'failed writes']],
  nbd: [['job', 'fio job'], ['config', 'server'], ['MBps', 'MB/s'], ['iops', 'IOPS'], ['p50us', 'p50 µs'], ['p99us', 'p99 µs'], ['ref', 'reference'], ['vsNbdkit', '× ref'], ['p50VsNbdkit', 'p50 × ref'], ['vsProxy', '× nbdkit-proxy']],
  resync: [],
  cycle: [['measure', 'measure'], ['ms', 'ms'], ['wireBytes', 'bytes on the wire'], ['mbps', 'MB/s'], ['note', 'note']],
  zeros: [['scenario', 'scenario'], ['code', 'code'], ['seconds', 's (process start → done)'], ['reportedSeconds', 's (reported by the primary)'], ['wireMiB', 'MiB on the wire'], ['wirePerData', 'wire / data'], ['MBps', 'volume MB/s']],
  'nbd-mirror-on-nbd': [['job', 'fio job'], ['config', 'server'], ['MBps', 'MB/s'], ['iops', 'IOPS'], ['p50us', 'p50 µs'], ['p99us', 'p99 µs'], ['ref', 'reference'], ['vsNbdkit', '× ref'], ['p50VsNbdkit', 'p50 × ref']],
};

const titles: Record<string, string> = {
  codec: 'Wire codec (encode + decode per frame)',
  journal: 'Journal appends (32 concurrent) vs plain positional writes',
  replay: 'Journal replay after an outage vs raw TCP on the same loopback; journal append overhead; primary RSS while a large backlog sits in the journal and is replayed (issue 11, goal ≤ 150 MiB)',
  write: 'Mirrored writes through the API, target in a separate process on loopback, vs unmirrored writes to the same kind of file',
  nbd: 'fio (`--ioengine=nbd`) against nbdkit (`file`; `nbd` forwarding to `file`, one C network hop; `null`) and our NBD export (discarding backend, unmirrored file, async-, sync-mirrored, cycle mode with a freeze every second)',
  resync: 'Initial sync / checksum sync / resync bytes per dirty byte (1 GiB)',
  cycle: 'Freeze/copy cycle: 1 GiB volume, 1 % random 4 KiB blocks changed, vs rsync of the same images; foreground writes during a cycle',
  zeros: 'Sparse volume through the CLI (issue 13): 4 GiB holding 64 MiB, initial sync and first cycle to a blank mirror (now vs `today` = the code before issue 13), `nbdcopy` out of the export vs `nbdkit file`',
  'nbd-mirror-on-nbd': 'Sync mirror whose mirror-side volume is an `NbdBlockDevice` on `nbdkit file` (`sync-nbd`) vs a `FileBlockDevice` (`sync`), same fio jobs (issue 13, item 6; `npm run bench -- --only nbd --nbd-configs sync,sync-nbd`)',
};

function cell(v: unknown): string {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100);
  return String(v).replace(/\|/g, '\\|');
}

const out: string[] = [];
for (const [name, suite] of Object.entries(latest.suites)) {
  const cols = columns[name]?.length ? columns[name]! : Object.keys(suite.rows[0] ?? {}).map((k) => [k, k] as [string, string]);
  const m = suite.machine;
  out.push(`**${titles[name] ?? name}** — ${m.date.slice(0, 16).replace('T', ' ')} UTC, ${m.cpus} × ${m.cpuModel}, Node ${m.node}, load ${m.loadAverage[0]} → ${suite.loadAverageAfter[0]}${m.commit ? `, commit ${m.commit.slice(0, 7)}` : ''}${m.childNodeArgs ? `, servers run with \`node ${m.childNodeArgs}\`` : ''}`);
  out.push('');
  out.push(`| ${cols.map((c) => c[1]).join(' | ')} |`);
  out.push(`|${cols.map(() => '---').join('|')}|`);
  for (const row of suite.rows) out.push(`| ${cols.map((c) => cell(row[c[0]])).join(' | ')} |`);
  out.push('');
}

const readmeUrl = new URL('README.md', root);
const readme = readFileSync(readmeUrl, 'utf8');
const start = readme.indexOf('<!-- bench:start -->');
const end = readme.indexOf('<!-- bench:end -->');
if (start < 0 || end < start) throw new Error('README.md lacks the bench markers');
writeFileSync(readmeUrl, `${readme.slice(0, start)}<!-- bench:start -->\n\n${out.join('\n')}\n${readme.slice(end)}`);
console.log(`README.md: ${Object.keys(latest.suites).length} benchmark tables`);
