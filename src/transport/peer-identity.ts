/**
 * Who a TLS peer is allowed to be: a list of names (the certificate's
 * subject CN or a subjectAltName DNS/IP entry, compared exactly) or SHA-256
 * certificate fingerprints (`sha256:` followed by 64 hex digits, colons
 * optional, any case).
 *
 * @module
 */
import type { PeerCertificate } from 'node:tls';
import { BlockMirrorError } from '../errors.js';

const FP = /^sha256:([0-9a-f]{2}(?::?[0-9a-f]{2}){31})$/i;

/** One parsed entry of an allowed-peer list. */
export type PeerPattern = { kind: 'name'; name: string } | { kind: 'fingerprint'; sha256: string };

/**
 * Parses an allowed-peer list.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for an empty entry or a malformed fingerprint.
 */
export function parsePeerPatterns(list: readonly string[]): PeerPattern[] {
  if (!Array.isArray(list)) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'allowed peers must be an array of strings');
  return list.map((entry) => {
    if (typeof entry !== 'string' || entry.trim() === '') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'an allowed peer must be a non-empty string');
    if (/^sha256:/i.test(entry)) {
      const m = FP.exec(entry);
      if (m === null) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `allowed peer ${JSON.stringify(entry)}: sha256: must be followed by 64 hex digits`);
      return { kind: 'fingerprint', sha256: m[1]!.replaceAll(':', '').toUpperCase() };
    }
    return { kind: 'name', name: entry };
  });
}

/** Names a certificate answers to: its subject CN and its subjectAltName DNS and IP entries. */
export function certificateNames(cert: PeerCertificate): string[] {
  const names: string[] = [];
  const cn = cert.subject?.CN;
  if (typeof cn === 'string') names.push(cn);
  else if (Array.isArray(cn)) names.push(...(cn as string[]));
  for (const part of (cert.subjectaltname ?? '').split(',')) {
    const m = /^\s*(DNS|IP Address):(.*)$/.exec(part);
    if (m !== null) names.push(m[2]!.trim());
  }
  return names;
}

/** True when `cert` matches one of `patterns`. */
export function peerAllowed(cert: PeerCertificate | undefined, patterns: readonly PeerPattern[]): boolean {
  if (cert === undefined || cert === null || typeof cert.fingerprint256 !== 'string') return false;
  const fp = cert.fingerprint256.replaceAll(':', '').toUpperCase();
  const names = certificateNames(cert);
  return patterns.some((p) => (p.kind === 'fingerprint' ? p.sha256 === fp : names.includes(p.name)));
}

/** A short description of a peer certificate for errors and logs. */
export function describeCertificate(cert: PeerCertificate | undefined): string {
  if (cert === undefined || cert === null || typeof cert.fingerprint256 !== 'string') return 'no certificate';
  return `${certificateNames(cert).join(', ') || '(no name)'} sha256:${cert.fingerprint256.replaceAll(':', '').toLowerCase()}`;
}
