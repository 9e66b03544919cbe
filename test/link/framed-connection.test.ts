/**
 * FramedConnection's closing: the one-second safety timer that destroys a
 * connection whose peer does not close is only armed when there is a peer
 * to wait for.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockMirrorError } from '../../src/errors.js';
import { FramedConnection } from '../../src/link/framed-connection.js';
import { StubConnection } from '../fuzz/stub-connection.js';
import { collectGarbage } from '../helpers/gc.js';

test('issue 14: a connection whose transport closes within end() is freed at once (no safety timer holds it for a second)', async () => {
  // the fuzz surfaces' transport closes synchronously: each failed input kept its connection, decoder and receiver alive for a second
  const closeOne = (how: 'fail' | 'close'): WeakRef<FramedConnection> => {
    const conn = new FramedConnection(new StubConnection());
    if (how === 'fail') conn.fail(new BlockMirrorError('BM_ERR_PROTOCOL', 'bad frame'));
    else conn.close();
    assert.equal(conn.closed, true);
    return new WeakRef(conn);
  };
  const refs = [closeOne('fail'), closeOne('close')];
  await collectGarbage();
  assert.deepEqual(
    refs.map((r) => r.deref() === undefined),
    [true, true],
  );
});
