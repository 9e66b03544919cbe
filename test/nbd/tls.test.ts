/**
 * NBD over TLS (NBD_OPT_STARTTLS) with real clients — nbdinfo (nbds://),
 * nbdcopy, qemu-io and qemu-img with `--object tls-creds-x509` — and a
 * TLS-only server that refuses plaintext. Certificates come from the
 * `openssl` CLI (a test CA; client certificates are required). Missing
 * tools skip the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { createTestPki, type CertPair, type TestPki } from '../helpers/certs.js';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';
import { RawClient } from './raw-client.js';

const MiB = 1024 * 1024;

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

describe('NBD over TLS', { skip: !requireTool('openssl') }, () => {
  let pki: TestPki;
  let serverCert: CertPair;
  let clientDir: string;
  before(() => {
    pki = createTestPki();
    serverCert = pki.issue('nbd-server', { dns: ['localhost'], ip: ['127.0.0.1'] });
    clientDir = pki.qemuDir('client', pki.issue('nbd-client'));
  });
  after(() => pki?.cleanup());

  async function serve(t: TestContext, device: MemoryBlockDevice, tlsOnly = true): Promise<{ server: NbdServer; port: number; errors: string[] }> {
    const server = new NbdServer({
      exports: [{ name: 'disk', readOnly: false, backend: device }],
      tls: { cert: serverCert.cert, key: serverCert.key, ca: pki.ca },
      tlsOnly,
    });
    const errors: string[] = [];
    server.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
    t.after(() => server.close());
    return { server, port, errors };
  }

  test('nbdinfo nbds:// sees the export over TLS; plaintext nbd:// and a client without a certificate are refused by the TLS-only server', async (t) => {
    if (!requireTool('nbdinfo', t)) return;
    const { port } = await serve(t, new MemoryBlockDevice(4 * MiB));
    const info = await runTool(t, 'nbdinfo', ['--json', `nbds://127.0.0.1:${port}/disk?tls-certificates=${clientDir}`]);
    ok(info, 'nbdinfo nbds://');
    const parsed = JSON.parse(info.stdout) as { exports: Array<{ 'export-size': number }> };
    assert.equal(parsed.exports[0]!['export-size'], 4 * MiB);
    const plain = await runTool(t, 'nbdinfo', [`nbd://127.0.0.1:${port}/disk`]);
    assert.notEqual(plain.code, 0, 'plaintext must fail');
    // a client without a certificate of the CA fails the TLS handshake
    const caOnly = await fs.mkdtemp(path.join(pki.dir, 'ca-only-'));
    await fs.copyFile(pki.caPath, path.join(caOnly, 'ca-cert.pem'));
    const anonymous = await runTool(t, 'nbdinfo', [`nbds://127.0.0.1:${port}/disk?tls-certificates=${caOnly}`]);
    assert.notEqual(anonymous.code, 0, 'a client without a certificate must fail');
  });

  test('nbdcopy writes an 8 MiB image over TLS and reads it back byte for byte', async (t) => {
    if (!requireTool('nbdcopy', t)) return;
    const device = new MemoryBlockDevice(8 * MiB);
    const { port } = await serve(t, device);
    const dir = await fs.mkdtemp(path.join(pki.dir, 'copy-'));
    const src = path.join(dir, 'src.img');
    const image = randomBytes(8 * MiB);
    await fs.writeFile(src, image);
    const uri = `nbds://127.0.0.1:${port}/disk?tls-certificates=${clientDir}`;
    ok(await runTool(t, 'nbdcopy', ['--flush', src, uri]), 'nbdcopy to nbds');
    assert.ok((await device.read(0, 8 * MiB)).equals(image));
    const back = path.join(dir, 'back.img');
    ok(await runTool(t, 'nbdcopy', [uri, back]), 'nbdcopy from nbds');
    assert.ok((await fs.readFile(back)).equals(image));
  });

  test('qemu-io and qemu-img with --object tls-creds-x509: write, read-verify, info', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const device = new MemoryBlockDevice(4 * MiB);
    const { port } = await serve(t, device);
    const creds = `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`;
    const image = `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`;
    const r = await runTool(t, 'qemu-io', ['--object', creds, '--image-opts', image, '-c', 'write -P 0xab 0 64k', '-c', 'read -P 0xab 0 64k', '-c', 'flush']);
    ok(r, 'qemu-io over TLS');
    assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i);
    assert.ok((await device.read(0, 64 * 1024)).every((b) => b === 0xab));
    const info = await runTool(t, 'qemu-img', ['info', '--object', creds, '--image-opts', image, '--output=json']);
    ok(info, 'qemu-img info over TLS');
    assert.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 4 * MiB);
  });

  test('byte level: before STARTTLS every option gets NBD_REP_ERR_TLS_REQD; bytes pipelined after STARTTLS close the connection', async (t) => {
    const { errors, port } = await serve(t, new MemoryBlockDevice(MiB));
    const c = await RawClient.connect(port);
    t.after(() => c.destroy());
    await c.handshake();
    await c.sendOption(P.NBD_OPT_LIST);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_TLS_REQD);
    const go = await c.infoOrGo(P.NBD_OPT_GO, 'disk');
    assert.equal(go.final, P.NBD_REP_ERR_TLS_REQD);
    // STARTTLS followed at once by a plaintext option: an injection attempt
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
    h.writeUInt32BE(P.NBD_OPT_STARTTLS, 8);
    const inj = Buffer.alloc(16);
    inj.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
    inj.writeUInt32BE(P.NBD_OPT_LIST, 8);
    await c.write(Buffer.concat([h, inj]));
    await c.waitClosed();
    assert.ok(errors.some((e) => e.startsWith('BM_ERR_PROTOCOL')), errors.join('\n'));
  });

  test('a server without tls answers STARTTLS with NBD_REP_ERR_UNSUP; tlsOnly without tls is refused', async (t) => {
    assert.throws(() => new NbdServer({ exports: [], tlsOnly: true }), /tlsOnly needs tls/);
    const server = new NbdServer({ exports: [{ name: 'disk', readOnly: false, backend: new MemoryBlockDevice(MiB) }] });
    const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
    t.after(() => server.close());
    const c = await RawClient.connect(port);
    t.after(() => c.destroy());
    await c.handshake();
    await c.sendOption(P.NBD_OPT_STARTTLS);
    assert.equal((await c.optionReply()).type, P.NBD_REP_ERR_UNSUP);
  });
});
