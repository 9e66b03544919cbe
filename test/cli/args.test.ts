/**
 * CLI argument parsing and the flags → PrimaryOptions mapping, in process.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError } from '../../src/errors.js';
import { parseCommandLine, parseHostPort, parseVolumeSpec, DEFAULT_DRAIN_TIMEOUT, type PrimaryConfig } from '../../src/cli/args.js';
import { EXIT_FAILURE, EXIT_USAGE, exitCodeFor, formatError } from '../../src/cli/errors.js';
import { mirrorTargetOptionsFrom, primaryOptionsFrom } from '../../src/cli/options.js';
import { stateDirOf } from '../../src/cli/state-dir.js';

function usage(fn: () => unknown, code = 'BM_ERR_INVALID_ARGUMENT', message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof BlockMirrorError);
    assert.equal(e.code, code);
    assert.equal(exitCodeFor(e), EXIT_USAGE);
    if (message !== undefined) assert.match(e.message, message);
    return true;
  });
}

describe('CLI arguments', () => {
  test('--volume NAME=PATH[:SIZE]: sizes with suffixes, path without size, bad specs', () => {
    assert.deepEqual(parseVolumeSpec('vol0=/data/v0.img:64M'), { name: 'vol0', path: '/data/v0.img', size: 64 * 1024 * 1024 });
    assert.deepEqual(parseVolumeSpec('v=rel/v.img:1G'), { name: 'v', path: 'rel/v.img', size: 2 ** 30 });
    assert.deepEqual(parseVolumeSpec('v=/a=b/v.img:4096'), { name: 'v', path: '/a=b/v.img', size: 4096 });
    assert.deepEqual(parseVolumeSpec('v=/data/v.img'), { name: 'v', path: '/data/v.img' });
    usage(() => parseVolumeSpec('v=/x:64Q'), 'BM_ERR_INVALID_ARGUMENT', /invalid size "64Q"/);
    usage(() => parseVolumeSpec('v=/x:0'), 'BM_ERR_INVALID_ARGUMENT', /greater than 0/);
    usage(() => parseVolumeSpec('v=/x:1000'), 'BM_ERR_INVALID_ARGUMENT', /multiple of 512/);
    usage(() => parseVolumeSpec('/x:1M'), 'BM_ERR_INVALID_ARGUMENT', /NAME=PATH/);
    usage(() => parseVolumeSpec('v=:1M'), 'BM_ERR_INVALID_ARGUMENT', /missing PATH/);
    usage(() => parseVolumeSpec('a/b=/x:1M'), 'BM_ERR_INVALID_ARGUMENT', /invalid volume name/);
  });

  test('--volume NAME=nbd://HOST:PORT/EXPORT and NAME=nbd+unix:///EXPORT?socket=PATH: the URI is taken whole; TLS and malformed URIs are usage errors', () => {
    assert.deepEqual(parseVolumeSpec('db=nbd://storage.example:10810/db-export'), {
      name: 'db',
      path: 'nbd://storage.example:10810/db-export',
      nbd: { host: 'storage.example', port: 10810, exportName: 'db-export' },
    });
    assert.deepEqual(parseVolumeSpec('v=nbd://[::1]/'), { name: 'v', path: 'nbd://[::1]/', nbd: { host: '::1', port: 10809, exportName: '' } });
    assert.deepEqual(parseVolumeSpec('v=nbd+unix:///img?socket=/run/qemu-nbd.sock'), {
      name: 'v',
      path: 'nbd+unix:///img?socket=/run/qemu-nbd.sock',
      nbd: { socket: '/run/qemu-nbd.sock', exportName: 'img' },
    });
    usage(() => parseVolumeSpec('v=nbds://h/x'), 'BM_ERR_INVALID_ARGUMENT', /--volume v: NBD over TLS/);
    usage(() => parseVolumeSpec('v=nbd+unix:///x'), 'BM_ERR_INVALID_ARGUMENT', /needs \?socket=PATH/);
    usage(() => parseVolumeSpec('v=nbd://h:99999/x'), 'BM_ERR_INVALID_ARGUMENT', /invalid NBD URI/);
    usage(() => parseVolumeSpec('v=nbd://h/x?tls=1'), 'BM_ERR_INVALID_ARGUMENT', /unknown query parameter tls/);
    // --state-dir is required when no volume is a file; cycle mode needs --journal for NBD volumes
    usage(() => parseCommandLine(['mirror', '--listen', '7000', '--volume', 'v=nbd://h/x']), 'BM_ERR_INVALID_ARGUMENT', /--state-dir DIR is required/);
    const mirror = parseCommandLine(['mirror', '--listen', '7000', '--volume', 'v=nbd://h/x', '--state-dir', '/var/lib/bm']);
    assert.equal(mirror.kind === 'mirror' ? mirror.config.stateDir : undefined, '/var/lib/bm');
    const mixed = parseCommandLine(['primary', '--peer', 'm:7000', '--volume', 'a=nbd://h/x', '--volume', 'b=/b.img:1M']);
    assert.equal(mixed.kind === 'primary' ? mixed.config.stateDir : 'x', undefined, 'a file volume gives the default');
    assert.equal(mixed.kind === 'primary' ? stateDirOf(mixed.config, 'primary') : undefined, '/b.img.primary-state', 'beside the first volume file');
    usage(
      () => parseCommandLine(['primary', '--peer', 'm:7000', '--mode', 'cycle', '--volume', 'a=nbd://h/x', '--state-dir', '/s']),
      'BM_ERR_INVALID_ARGUMENT',
      /--mode cycle with volume a on an NBD server needs --journal DIR/,
    );
  });

  test('HOST:PORT, [IPv6]:PORT and PORT', () => {
    assert.deepEqual(parseHostPort('10.0.0.2:7000', '--peer', false), { host: '10.0.0.2', port: 7000 });
    assert.deepEqual(parseHostPort('[::1]:7000', '--peer', false), { host: '::1', port: 7000 });
    assert.deepEqual(parseHostPort('9100', '--admin', true), { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(parseHostPort('0.0.0.0:0', '--listen', true), { host: '0.0.0.0', port: 0 });
    usage(() => parseHostPort('host:0', '--peer', false), 'BM_ERR_INVALID_ARGUMENT', /--peer: port must be from 1/);
    usage(() => parseHostPort('::1:7000', '--peer', false), 'BM_ERR_INVALID_ARGUMENT', /expected HOST:PORT/);
    usage(() => parseHostPort('host:http', '--peer', false), 'BM_ERR_INVALID_ARGUMENT', /invalid port/);
    usage(() => parseHostPort(':7000', '--peer', false));
  });

  test('primary: every flag parsed and validated; defaults', () => {
    const cmd = parseCommandLine([
      'primary', '--peer', 'mirror.example:7000', '--volume', 'a=/a.img:1M', '--volume', 'b=/b.img',
      '--mode', 'async', '--connections', '8', '--journal', '/var/lib/bm', '--nbd', '0.0.0.0:10809', '--admin', '9100',
      '--secret-file', '/etc/bm.secret', '--heartbeat-interval', '1500', '--stale-after', '4000', '--probation', '10000',
      '--drain-timeout', '2000',
    ]);
    assert.equal(cmd.kind, 'primary');
    assert.deepEqual(cmd.kind === 'primary' ? cmd.config : undefined, {
      volumes: [{ name: 'a', path: '/a.img', size: 1024 * 1024 }, { name: 'b', path: '/b.img' }],
      nbd: { host: '0.0.0.0', port: 10809 },
      admin: { host: '127.0.0.1', port: 9100 },
      secretFile: '/etc/bm.secret',
      peer: { host: 'mirror.example', port: 7000 },
      mode: 'async',
      connections: 8,
      journalDir: '/var/lib/bm',
      heartbeatInterval: 1500,
      staleAfter: 4000,
      probation: 10000,
      drainTimeout: 2000,
    });
    const noCrc = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--no-payload-checksum']);
    assert.equal(noCrc.kind === 'primary' ? noCrc.config.noPayloadChecksum : undefined, true);
    const minimal = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img']);
    assert.deepEqual(minimal.kind === 'primary' ? minimal.config : undefined, {
      volumes: [{ name: 'a', path: '/a.img' }],
      peer: { host: '127.0.0.1', port: 7000 },
      mode: 'sync',
      drainTimeout: DEFAULT_DRAIN_TIMEOUT,
    });
    const cycle = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--cycle-interval', '2500', '--bandwidth', '64M']);
    assert.equal(cycle.kind === 'primary' ? cycle.config.mode : undefined, 'cycle');
    assert.equal(cycle.kind === 'primary' ? cycle.config.cycleInterval : undefined, 2500);
    assert.equal(cycle.kind === 'primary' ? cycle.config.bandwidth : undefined, 64 * 1024 * 1024);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--cycle-interval', '100']), 'BM_ERR_INVALID_ARGUMENT', /--cycle-interval applies to --mode cycle only/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--connections', '2']), 'BM_ERR_INVALID_ARGUMENT', /--connections applies to --mode sync and async only/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--bandwidth', 'fast']), 'BM_ERR_INVALID_ARGUMENT', /--bandwidth/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--bandwidth', '0']), 'BM_ERR_INVALID_ARGUMENT', /at least 1 byte/);
    const initial = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'async', '--initial-sync', 'checksum']);
    assert.equal(initial.kind === 'primary' ? initial.config.initialSync : undefined, 'checksum');
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--initial-sync', 'fast']), 'BM_ERR_INVALID_ARGUMENT', /--initial-sync must be checksum, full or none/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--initial-sync', 'full']), 'BM_ERR_INVALID_ARGUMENT', /--initial-sync applies to --mode sync and async only/);
    const clean = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--assume-clean', '--state-dir', '/srv/p', '--resync-rate', '8M']);
    assert.deepEqual(
      clean.kind === 'primary' ? [clean.config.initialSync, clean.config.stateDir, clean.config.resyncRate] : undefined,
      ['none', '/srv/p', 8 * 1024 * 1024],
      '--assume-clean is --initial-sync none; --state-dir; --resync-rate',
    );
    const none = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--initial-sync', 'none', '--assume-clean']);
    assert.equal(none.kind === 'primary' ? none.config.initialSync : undefined, 'none');
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--initial-sync', 'full', '--assume-clean']), 'BM_ERR_INVALID_ARGUMENT', /--assume-clean contradicts --initial-sync full/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--assume-clean']), 'BM_ERR_INVALID_ARGUMENT', /--assume-clean applies to --mode sync and async only/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--resync-rate', '0']), 'BM_ERR_INVALID_ARGUMENT', /--resync-rate must be at least 1 byte/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--mode', 'cycle', '--resync-rate', '1M']), 'BM_ERR_INVALID_ARGUMENT', /--resync-rate applies to --mode sync and async only/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--state-dir', '']), 'BM_ERR_INVALID_ARGUMENT', /--state-dir: empty/);
    const mirrorState = parseCommandLine(['mirror', '--listen', '7000', '--volume', 'a=/a.img', '--state-dir', '/srv/state']);
    assert.equal(mirrorState.kind === 'mirror' ? mirrorState.config.stateDir : undefined, '/srv/state');
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--stale-after', '0']), 'BM_ERR_INVALID_ARGUMENT', /--stale-after/);
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--connections', '65']));
    usage(() => parseCommandLine(['primary', '--peer', '127.0.0.1:7000', '--volume', 'a=/a.img', '--volume', 'b=/a.img']), 'BM_ERR_INVALID_ARGUMENT', /used by another volume/);
    usage(() => parseCommandLine(['primary', '--peer']), 'BM_ERR_INVALID_ARGUMENT', /--peer/);
    usage(() => parseCommandLine(['primary', 'extra']), 'BM_ERR_INVALID_ARGUMENT', /unexpected argument "extra"/);
  });

  test('mirror, status, demo, help and version', () => {
    const m = parseCommandLine(['mirror', '--listen', '0.0.0.0:7000', '--volume', 'a=/a.img:1M', '--nbd', '127.0.0.1:0']);
    assert.deepEqual(m.kind === 'mirror' ? m.config : undefined, {
      volumes: [{ name: 'a', path: '/a.img', size: 1024 * 1024 }],
      nbd: { host: '127.0.0.1', port: 0 },
      listen: { host: '0.0.0.0', port: 7000 },
    });
    const s = parseCommandLine(['status', '--admin', '127.0.0.1:9100', '--json']);
    assert.deepEqual(s, { kind: 'status', config: { admin: { host: '127.0.0.1', port: 9100 }, json: true } });
    assert.deepEqual(parseCommandLine(['demo']), { kind: 'demo' });
    usage(() => parseCommandLine(['demo', '--fast']), 'BM_ERR_INVALID_ARGUMENT', /unknown option --fast/);
    assert.equal(parseCommandLine(['--help']).kind, 'help');
    assert.equal(parseCommandLine(['mirror', '-h']).kind, 'help');
    assert.deepEqual(parseCommandLine(['-V']), { kind: 'version' });
  });

  test('primaryOptionsFrom / mirrorTargetOptionsFrom: the single place flags become library options', () => {
    const a = new MemoryBlockDevice(1 << 20);
    const b = new MemoryBlockDevice(1 << 20);
    const config: PrimaryConfig = {
      volumes: [{ name: 'a', path: '/a' }, { name: 'b', path: '/b', mode: 'async' }],
      peer: { host: '127.0.0.1', port: 7000 },
      mode: 'sync',
      connections: 2,
      journalDir: '/j',
      heartbeatInterval: 100,
      staleAfter: 400,
      probation: 50,
      drainTimeout: 1000,
    };
    const options = primaryOptionsFrom(config, { devices: new Map([['a', a], ['b', b]]), secret: 's3cret' });
    assert.deepEqual(options.peer, { host: '127.0.0.1', port: 7000 });
    assert.deepEqual(options.volumes.map((v) => [v.name, v.device, v.mode]), [['a', a, 'sync'], ['b', b, 'async']]);
    assert.equal(options.connections, 2);
    assert.equal(options.secret, 's3cret');
    assert.equal(options.waitForConnection, false, 'serve while connecting');
    assert.deepEqual(options.journal, { dir: '/j' });
    assert.deepEqual([options.heartbeatInterval, options.staleAfter, options.probation], [100, 400, 50]);
    assert.equal(options.payloadChecksum, undefined, 'payload CRC on by default');
    assert.equal(primaryOptionsFrom({ ...config, noPayloadChecksum: true }, { devices: new Map([['a', a], ['b', b]]) }).payloadChecksum, false);
    const t = mirrorTargetOptionsFrom(
      { listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'a', path: '/a' }], probation: 70 },
      { devices: new Map([['a', a]]) },
    );
    assert.equal(t.probation, 70);
    assert.deepEqual(t.listen, { host: '127.0.0.1', port: 0 });
    assert.equal(t.volumes[0]!.device, a);
    assert.equal(t.secret, undefined);
  });

  test('error lines: one line, code first; stack only with debug; exit statuses', () => {
    const e = new BlockMirrorError('BM_ERR_ADDRESS_IN_USE', 'cannot listen on 127.0.0.1:7000:\n  EADDRINUSE');
    assert.equal(formatError(e), 'blockmirror: BM_ERR_ADDRESS_IN_USE: cannot listen on 127.0.0.1:7000: EADDRINUSE\n');
    assert.equal(exitCodeFor(e), EXIT_FAILURE);
    assert.match(formatError(e, true), /^blockmirror: BM_ERR_ADDRESS_IN_USE: .*\nBlockMirrorError: [^]*\n\s+at /);
    assert.equal(formatError(new TypeError('boom')), 'blockmirror: internal error: boom\n');
    assert.equal(formatError(Object.assign(new Error('gone'), { code: 'ENOENT' })), 'blockmirror: ENOENT: gone\n');
  });
});

test('resolve, promote and demote: parsed into an admin address and a volume; resolve needs exactly one of --discard-local / --discard-remote', () => {
  assert.deepEqual(parseCommandLine(['resolve', '--admin', '127.0.0.1:9090', '--volume', 'db', '--discard-local']), {
    kind: 'resolve',
    config: { admin: { host: '127.0.0.1', port: 9090 }, volume: 'db', discard: 'local' },
  });
  assert.deepEqual(parseCommandLine(['promote', '--admin', '9090', '--volume', 'db', '--force']), { kind: 'promote', config: { admin: { host: '127.0.0.1', port: 9090 }, volume: 'db', force: true } });
  assert.deepEqual(parseCommandLine(['demote', '--admin', '9090', '--volume', 'db', '--timeout', '5000']), { kind: 'demote', config: { admin: { host: '127.0.0.1', port: 9090 }, volume: 'db', timeout: 5000 } });
  assert.throws(() => parseCommandLine(['resolve', '--admin', '9090', '--volume', 'db']), { code: 'BM_ERR_INVALID_ARGUMENT', message: /exactly one of --discard-local and --discard-remote/ });
  assert.throws(() => parseCommandLine(['resolve', '--admin', '9090', '--volume', 'db', '--discard-local', '--discard-remote']), { code: 'BM_ERR_INVALID_ARGUMENT' });
  assert.throws(() => parseCommandLine(['promote', '--admin', '9090']), { code: 'BM_ERR_INVALID_ARGUMENT', message: /missing --volume/ });
  assert.throws(() => parseCommandLine(['demote', '--admin', '9090', '--volume', 'db', '--force']), { code: 'BM_ERR_INVALID_ARGUMENT' });
});

test('issue 12 (5): promote --peer HOST:PORT is parsed (in-place serving); a malformed or repeated --peer is a usage error; other role commands refuse it', () => {
  assert.deepEqual(parseCommandLine(['promote', '--admin', '9090', '--volume', 'db', '--peer', 'a.example:7070']), {
    kind: 'promote',
    config: { admin: { host: '127.0.0.1', port: 9090 }, volume: 'db', force: false, peer: { host: 'a.example', port: 7070 } },
  });
  assert.deepEqual(parseCommandLine(['promote', '--admin', '9090', '--volume', 'db', '--force', '--peer', '[::1]:7070']).kind, 'promote');
  for (const bad of ['a.example', 'a.example:0', 'a.example:70000', ':7070', 'a b:1']) {
    assert.throws(() => parseCommandLine(['promote', '--admin', '9090', '--volume', 'db', '--peer', bad]), (error: unknown) => {
      const e = error as { code?: string; message?: string; details?: { usage?: boolean } };
      return e.code === 'BM_ERR_INVALID_ARGUMENT' && e.details?.usage === true && /--peer/.test(e.message ?? '');
    }, bad);
  }
  assert.throws(() => parseCommandLine(['promote', '--admin', '9090', '--volume', 'db', '--peer', '1:1', '--peer', '1:2']), { code: 'BM_ERR_INVALID_ARGUMENT', message: /--peer given more than once/ });
  assert.throws(() => parseCommandLine(['demote', '--admin', '9090', '--volume', 'db', '--peer', '1:1']), { code: 'BM_ERR_INVALID_ARGUMENT', message: /unknown option --peer/ });
});
