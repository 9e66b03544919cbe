/**
 * Fuzz surface: CLI arguments and volume specs. Valid command lines, then
 * arguments damaged byte by byte, reordered, dropped or repeated. Every
 * outcome is a parsed command or a coded usage error.
 */
import fc from 'fast-check';
import { parseCommandLine, parseVolumeSpec } from '../../../src/cli/args.js';
import { applyMutations, mutationsArb, reorder, reordersArb } from '../mutate.js';
import { assertCoded, type Surface } from '../surface.js';

const hostPort = fc.oneof(fc.constant('127.0.0.1:7000'), fc.constant('7000'), fc.constant('[::1]:0'), fc.constant('0.0.0.0:10809'));
const size = fc.constantFrom('', ':1M', ':4096', ':64K', ':1G', ':0', ':3');
const volume = fc.tuple(fc.constantFrom('db', 'v1', 'a-b_c'), fc.constantFrom('/tmp/x.img', 'rel/path', 'nbd://h:1/e', 'nbd+unix:///e?socket=/s'), size).map(([n, p, s]) => `${n}=${p}${p.startsWith('nbd') ? '' : s}`);
const ms = fc.constantFrom('1500', '0', '10', '4s', '-1', '1e9');

const mirrorArgs = fc.tuple(hostPort, fc.array(volume, { minLength: 1, maxLength: 3 }), fc.option(hostPort), fc.option(ms)).map(([listen, vols, admin, hb]) => [
  'mirror',
  '--listen',
  listen,
  ...vols.flatMap((v) => ['--volume', v]),
  ...(admin === null ? [] : ['--admin', admin]),
  ...(hb === null ? [] : ['--heartbeat-interval', hb]),
]);
const primaryArgs = fc
  .tuple(hostPort, fc.array(volume, { minLength: 1, maxLength: 3 }), fc.constantFrom('sync', 'async', 'cycle', 'bogus'), fc.option(fc.constantFrom('1', '4', '65', 'x')), fc.option(fc.constantFrom('64M', '1G', '0', 'fast')))
  .map(([peer, vols, mode, conns, rate]) => [
    'primary',
    '--peer',
    peer,
    ...vols.flatMap((v) => ['--volume', v]),
    '--mode',
    mode,
    ...(conns === null ? [] : ['--connections', conns]),
    ...(rate === null ? [] : ['--resync-rate', rate]),
  ]);
const otherArgs: fc.Arbitrary<string[]> = fc.constantFrom<string[]>(['status', '--admin', '127.0.0.1:1', '--json'], ['demo'], ['--help'], ['help', 'primary'], ['--version'], []);

/** One input: a command line and the damage done to it. */
export interface CliInput {
  argv: readonly string[];
  order: Parameters<typeof reorder>[1];
  /** Per argument index: mutations of its UTF-8 bytes. */
  damage: Array<{ arg: number; mutations: Parameters<typeof applyMutations>[1] }>;
  spec: string;
  specDamage: Parameters<typeof applyMutations>[1];
}

const stats = { parsed: 0, refused: 0, specParsed: 0, specRefused: 0 };

export const cliSurface: Surface<CliInput> = {
  name: 'cli',
  stats,
  arbitrary: fc.record({
    argv: fc.oneof(mirrorArgs, primaryArgs, otherArgs),
    order: reordersArb,
    damage: fc.array(fc.record({ arg: fc.nat(), mutations: mutationsArb(3) }), { maxLength: 2 }),
    spec: volume,
    specDamage: mutationsArb(3),
  }),
  run(input) {
    const argv = reorder(input.argv, input.order);
    for (const d of input.damage) {
      if (argv.length === 0) break;
      const i = d.arg % argv.length;
      argv[i] = applyMutations(Buffer.from(argv[i]!, 'utf8'), d.mutations).toString('utf8');
    }
    try {
      const command = parseCommandLine(argv);
      if (command === null || typeof command !== 'object' || typeof command.kind !== 'string') throw new Error('parseCommandLine returned no command');
      stats.parsed++;
    } catch (error) {
      assertCoded(error, `parseCommandLine(${JSON.stringify(argv)})`);
      stats.refused++;
    }
    const spec = applyMutations(Buffer.from(input.spec, 'utf8'), input.specDamage).toString('utf8');
    try {
      const parsed = parseVolumeSpec(spec);
      if (typeof parsed.name !== 'string' || parsed.name === '') throw new Error(`parseVolumeSpec(${JSON.stringify(spec)}) gave no name`);
      stats.specParsed++;
    } catch (error) {
      assertCoded(error, `parseVolumeSpec(${JSON.stringify(spec)})`);
      stats.specRefused++;
    }
  },
};
