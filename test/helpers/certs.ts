/**
 * Test certificates made with the `openssl` CLI in a temporary directory:
 * a CA, certificates it signs (for a server and for clients, with
 * subjectAltNames), and a second, unrelated CA ("rogue") with a certificate
 * of its own. Also writes qemu's `tls-creds-x509` layout on request.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CertPair {
  cert: string;
  key: string;
  certPath: string;
  keyPath: string;
}

export interface TestPki {
  dir: string;
  ca: string;
  caPath: string;
  /** Signs a new certificate with this CA. */
  issue(name: string, options?: { dns?: string[]; ip?: string[] }): CertPair;
  /** A certificate of another CA (not trusted by the peers). */
  rogue(name: string): CertPair;
  /** qemu's tls-creds-x509 directory: ca-cert.pem, server-cert.pem/server-key.pem, client-cert.pem/client-key.pem. */
  qemuDir(endpoint: 'client' | 'server', pair: CertPair): string;
  cleanup(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
}

function sign(dir: string, ca: string, name: string, dns: string[], ip: string[]): CertPair {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
  const san = [...dns.map((d) => `DNS:${d}`), ...ip.map((i) => `IP:${i}`)].join(',');
  writeFileSync(join(dir, `${name}.ext`), `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n${san === '' ? '' : `subjectAltName=${san}\n`}`);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`], dir);
  return { cert: readFileSync(join(dir, `${name}.pem`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8'), certPath: join(dir, `${name}.pem`), keyPath: join(dir, `${name}.key`) };
}

/** Makes a CA in a new temporary directory (the `openssl` CLI must be on PATH). */
export function createTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'bm-pki-'));
  makeCa(dir, 'test-ca');
  let rogueMade = false;
  return {
    dir,
    ca: readFileSync(join(dir, 'test-ca.pem'), 'utf8'),
    caPath: join(dir, 'test-ca.pem'),
    issue: (name, options = {}) => sign(dir, 'test-ca', name, options.dns ?? [name], options.ip ?? ['127.0.0.1']),
    rogue(name) {
      if (!rogueMade) makeCa(dir, 'rogue-ca');
      rogueMade = true;
      return sign(dir, 'rogue-ca', name, [name], ['127.0.0.1']);
    },
    qemuDir(endpoint, pair) {
      const q = join(dir, `qemu-${endpoint}-${Math.random().toString(16).slice(2)}`);
      mkdirSync(q);
      copyFileSync(join(dir, 'test-ca.pem'), join(q, 'ca-cert.pem'));
      copyFileSync(pair.certPath, join(q, `${endpoint}-cert.pem`));
      copyFileSync(pair.keyPath, join(q, `${endpoint}-key.pem`));
      return q;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
