/**
 * NBD URIs (`doc/uri.md` of the NBD project): parsing and formatting.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BlockMirrorError } from '../../src/errors.js';
import { formatNbdUri, isNbdUri, parseNbdUri } from '../../src/nbd/uri.js';

function refused(uri: string, code: string, message: RegExp): void {
  assert.throws(() => parseNbdUri(uri), (e: unknown) => e instanceof BlockMirrorError && e.code === code && message.test(e.message), uri);
}

describe('NBD URIs', () => {
  test('the examples of the URI specification: export names, default port, IPv6, Unix sockets', () => {
    assert.deepEqual(parseNbdUri('nbd://example.com/disk'), { host: 'example.com', port: 10809, exportName: 'disk' });
    assert.deepEqual(parseNbdUri('nbd+unix:///disk?socket=sock'), { socket: 'sock', exportName: 'disk' });
    assert.deepEqual(parseNbdUri('nbd://example.com/'), { host: 'example.com', port: 10809, exportName: '' });
    assert.deepEqual(parseNbdUri('nbd://example.com'), { host: 'example.com', port: 10809, exportName: '' });
    assert.deepEqual(parseNbdUri('nbd://example.com//disk'), { host: 'example.com', port: 10809, exportName: '/disk' });
    assert.deepEqual(parseNbdUri('nbd://example.com/hello%20world'), { host: 'example.com', port: 10809, exportName: 'hello world' });
    assert.deepEqual(parseNbdUri('nbd://[::1]:10810/x'), { host: '::1', port: 10810, exportName: 'x' });
    // what nbdkit prints as $uri for `-U -`
    assert.deepEqual(parseNbdUri('nbd+unix://?socket=/tmp/nbdkitX/socket'), { socket: '/tmp/nbdkitX/socket', exportName: '' });
  });

  test('TLS schemes are not supported; malformed URIs are invalid arguments', () => {
    refused('nbds://h/x', 'BM_ERR_NOT_SUPPORTED', /TLS/);
    refused('nbds+unix:///x?socket=s', 'BM_ERR_NOT_SUPPORTED', /TLS/);
    refused('nbd+vsock:///x', 'BM_ERR_NOT_SUPPORTED', /unsupported NBD URI scheme/);
    refused('nbd+unix:///x', 'BM_ERR_INVALID_ARGUMENT', /needs \?socket=PATH/);
    refused('nbd+unix://host/x?socket=s', 'BM_ERR_INVALID_ARGUMENT', /takes no host/);
    refused('nbd:///x', 'BM_ERR_INVALID_ARGUMENT', /missing host/);
    refused('nbd://h:0/x', 'BM_ERR_INVALID_ARGUMENT', /bad port/);
    refused('nbd://user@h/x', 'BM_ERR_INVALID_ARGUMENT', /user info/);
    refused('nbd://h/x?tls-type=psk', 'BM_ERR_INVALID_ARGUMENT', /unknown query parameter/);
    refused('nbd://h/%ff', 'BM_ERR_INVALID_ARGUMENT', /percent-encoded/);
    refused('nbd://h/a%00b', 'BM_ERR_INVALID_ARGUMENT', /NUL/);
    refused('not a uri', 'BM_ERR_INVALID_ARGUMENT', /not a URI/);
  });

  test('isNbdUri recognises the schemes; formatNbdUri round-trips', () => {
    for (const s of ['nbd://h/x', 'NBD://h', 'nbd+unix:///x?socket=s', 'nbds://h']) assert.equal(isNbdUri(s), true, s);
    for (const s of ['/data/v.img', 'v.img:64M', 'file:///x', 'nbdx.img']) assert.equal(isNbdUri(s), false, s);
    for (const uri of ['nbd://h:10809/x', 'nbd://[::1]:99/a%20b', 'nbd+unix:///disk?socket=/run/s.sock', 'nbd://h:1//slash']) {
      assert.equal(formatNbdUri(parseNbdUri(uri)), uri);
    }
  });
});
