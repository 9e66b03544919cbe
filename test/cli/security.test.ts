/**
 * The CLI's security flags: parsing (`--tls-*`, `--tls-peer`, `--nbd-tls`,
 * `--nbd-tls-only`, `--admin-token-file`, `--admin-tls`, `--metrics-open`,
 * limits), the exposure warnings, the admin token from a file or the
 * environment, and a mirror and a primary paired over TLS with the
 * `--tls-*` flags, serving NBD over TLS only, with a token on the admin
 * endpoint (real processes, 127.0.0.1, port 0).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { parseCommandLine, type MirrorConfig, type PrimaryConfig } from '../../src/cli/args.js';
import { adminToken, exposureWarnings, ADMIN_TOKEN_ENV } from '../../src/cli/security.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { createTestPki, type TestPki } from '../helpers/certs.js';
import { requireTool, runTool } from '../helpers/tools.js';
import { CliProcess, listeningAddresses, tmpDir } from './cli-helpers.js';

const VOL = ['--volume', 'v=/tmp/x.img:1M'];

function mirror(...args: string[]): MirrorConfig {
  const c = parseCommandLine(['mirror', '--listen', '127.0.0.1:7000', ...VOL, ...args]);
  assert.equal(c.kind, 'mirror');
  return (c as { config: MirrorConfig }).config;
}

function usage(args: string[], message: RegExp): void {
  assert.throws(() => parseCommandLine(args), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT') && message.test(e.message), args.join(' '));
}

function fakeIo(): { io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream }; err: () => string } {
  let err = '';
  const sink = { write: (s: string) => ((err += s), true) } as unknown as NodeJS.WritableStream;
  return { io: { stdout: { write: () => true } as unknown as NodeJS.WritableStream, stderr: sink }, err: () => err };
}

describe('CLI security flags', () => {
  test('parsing: --tls-* go together, --tls-peer repeats, --nbd-tls(-only) need --tls-* and --nbd, admin flags need --admin, limits are checked', () => {
    const c = mirror('--tls-cert', 'c.pem', '--tls-key', 'k.pem', '--tls-ca', 'ca.pem', '--tls-peer', 'primary', '--tls-peer', `sha256:${'ab'.repeat(32)}`, '--nbd', '127.0.0.1:0', '--nbd-tls-only', '--max-sessions', '8', '--nbd-max-connections', '16', '--nbd-max-in-flight', '64M');
    assert.deepEqual(c.tls, { cert: 'c.pem', key: 'k.pem', ca: 'ca.pem', peers: ['primary', `sha256:${'ab'.repeat(32)}`] });
    assert.equal(c.nbdTls, 'only');
    assert.equal(c.maxSessions, 8);
    assert.equal(c.nbdMaxConnections, 16);
    assert.equal(c.nbdMaxInFlight, 64 * 1024 * 1024);
    const p = parseCommandLine(['primary', '--peer', '127.0.0.1:7000', ...VOL, '--admin', '127.0.0.1:0', '--admin-token-file', 't', '--metrics-open']) as { config: PrimaryConfig };
    assert.equal(p.config.adminTokenFile, 't');
    assert.equal(p.config.metricsOpen, true);
    const m = ['mirror', '--listen', '127.0.0.1:7000', ...VOL];
    usage([...m, '--tls-cert', 'c.pem'], /go together/);
    usage([...m, '--tls-peer', 'x'], /--tls-peer needs/);
    usage([...m, '--nbd', '127.0.0.1:0', '--nbd-tls'], /need --tls-cert/);
    usage([...m, '--tls-cert', 'c', '--tls-key', 'k', '--tls-ca', 'a', '--nbd-tls'], /need --nbd/);
    usage([...m, '--admin-tls'], /--admin-tls needs/);
    usage([...m, '--metrics-open'], /need --admin/);
    usage([...m, '--max-sessions', '0'], /--max-sessions/);
    usage([...m, '--nbd-max-connections', 'many'], /--nbd-max-connections/);
  });

  test('exposure warnings: one line per listener beyond loopback without authentication; none on loopback or when authenticated; none for heartbeats under TLS without a secret (issue 14: they are always authenticated)', () => {
    const config = mirror();
    const a = fakeIo();
    exposureWarnings(
      a.io as never,
      [
        { what: 'mirror', at: { host: '0.0.0.0', port: 7000 }, authenticated: false, remedy: 'use --secret-file or --tls-*' },
        { what: 'NBD', at: { host: '10.1.2.3', port: 10809 }, authenticated: false, remedy: 'use --nbd-tls-only' },
        { what: 'NBD', at: { host: '127.0.0.1', port: 10809 }, authenticated: false, remedy: '-' },
        { what: 'mirror', at: { host: '0.0.0.0', port: 7001 }, authenticated: true, remedy: '-' },
      ],
      config,
    );
    const lines = a.err().trim().split('\n');
    assert.equal(lines.length, 2, a.err());
    assert.match(lines[0]!, /^blockmirror: warning: mirror listener 0\.0\.0\.0:7000 is reachable beyond this machine without authentication/);
    assert.match(lines[1]!, /NBD listener 10\.1\.2\.3:10809/);
    const b = fakeIo();
    exposureWarnings(b.io as never, [], mirror('--tls-cert', 'c', '--tls-key', 'k', '--tls-ca', 'a'));
    assert.equal(b.err(), '', 'no warning: over TLS, heartbeats are never accepted unauthenticated');
  });

  test('admin token: first line of --admin-token-file, else the environment; an empty file is refused', async (t) => {
    const dir = await tmpDir(t);
    await fs.writeFile(path.join(dir, 'token'), 'file-token-0123456789\nignored\n');
    await fs.writeFile(path.join(dir, 'empty'), '\n');
    const base = mirror('--admin', '127.0.0.1:0');
    assert.equal(await adminToken({ ...base, adminTokenFile: path.join(dir, 'token') }, {}), 'file-token-0123456789');
    assert.equal(await adminToken(base, { [ADMIN_TOKEN_ENV]: 'env-token-0123456789' }), 'env-token-0123456789');
    assert.equal(await adminToken(base, {}), undefined);
    await assert.rejects(adminToken({ ...base, adminTokenFile: path.join(dir, 'empty') }, {}), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
  });
});

describe('CLI over TLS (real processes)', { skip: !requireTool('openssl') }, () => {
  let pki: TestPki;
  before(() => {
    pki = createTestPki();
  });
  after(() => pki?.cleanup());

  test('mirror and primary paired with --tls-* and --tls-peer; the primary serves NBD over TLS only; the admin endpoint wants the token', async (t) => {
    const dir = await tmpDir(t);
    const m = pki.issue('mirror-node');
    const p = pki.issue('primary-node', { dns: ['localhost'], ip: ['127.0.0.1'] });
    const token = 'cli-admin-token-0123456789';
    const mirrorProc = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${path.join(dir, 'm.img')}:4M`, '--tls-cert', m.certPath, '--tls-key', m.keyPath, '--tls-ca', pki.caPath, '--tls-peer', 'primary-node']);
    const mAddr = listeningAddresses(await mirrorProc.waitForLine(/^listening mirror=/)).mirror!;
    const primaryProc = new CliProcess(
      t,
      ['primary', '--peer', `127.0.0.1:${mAddr.port}`, '--volume', `v=${path.join(dir, 'p.img')}:4M`, '--assume-clean', '--tls-cert', p.certPath, '--tls-key', p.keyPath, '--tls-ca', pki.caPath, '--tls-peer', 'mirror-node', '--nbd', '127.0.0.1:0', '--nbd-tls-only', '--admin', '127.0.0.1:0'],
      { env: { BLOCKMIRROR_ADMIN_TOKEN: token } },
    );
    const addrs = listeningAddresses(await primaryProc.waitForLine(/^listening /));
    await primaryProc.waitForLine(/^link up/);
    // issue 14: over TLS the heartbeats are always authenticated (session key): nothing to warn about
    assert.doesNotMatch(primaryProc.stderr, /heartbeats/);
    // admin: 401 without the token, 200 with it
    const status = (auth?: string) =>
      new Promise<number>((resolve, reject) => {
        http.get(`http://127.0.0.1:${addrs.admin!.port}/status`, { headers: auth === undefined ? {} : { authorization: `Bearer ${auth}` } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        }).on('error', reject);
      });
    assert.equal(await status(), 401);
    assert.equal(await status(token), 200);
    if (requireTool('qemu-io', t)) {
      const client = pki.qemuDir('client', pki.issue('nbd-client'));
      const r = await runTool(t, 'qemu-io', ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${client}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${addrs.nbd!.port},export=v,tls-creds=tls0`, '-c', 'write -P 0x5a 0 64k', '-c', 'flush']);
      assert.equal(r.code, 0, r.stderr);
      // mirrored over the TLS link (sync): the mirror's file has it
      await primaryProc.stop('SIGINT');
      await mirrorProc.stop('SIGINT');
      const mirrored = await fs.readFile(path.join(dir, 'm.img'));
      assert.ok(mirrored.subarray(0, 64 * 1024).every((b) => b === 0x5a));
    } else {
      await primaryProc.stop('SIGINT');
      await mirrorProc.stop('SIGINT');
    }
  });
});
