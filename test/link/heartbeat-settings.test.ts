/**
 * Heartbeat settings negotiation as functions and on the wire: the primary's
 * interval and stale time govern a session; what cannot be agreed is refused
 * with BM_ERR_SETTINGS_MISMATCH naming both sides' values.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agreeHeartbeats, checkAgreedHeartbeats, describeHeartbeats } from '../../src/link/heartbeat-settings.js';
import { parseHello, parseReady } from '../../src/codec/messages.js';
import { BlockMirrorError, CONFIGURATION_REFUSALS } from '../../src/errors.js';

const primary = { interval: 100, staleAfter: 400 };
const mirror = { interval: 1500, staleAfter: 4000 };

function refused(fn: () => unknown, ...parts: RegExp[]): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof BlockMirrorError);
    assert.equal(error.code, 'BM_ERR_SETTINGS_MISMATCH');
    assert.doesNotMatch(error.message, /\n/, 'one line');
    for (const p of parts) assert.match(error.message, p);
    return true;
  });
}

test('the target takes over the primary\'s interval and stale time, whatever its own', () => {
  assert.deepEqual(agreeHeartbeats(primary, mirror), primary);
  assert.deepEqual(agreeHeartbeats(mirror, primary), mirror);
  // a primary that announces nothing (older build): the target's own settings
  assert.deepEqual(agreeHeartbeats(undefined, mirror), mirror);
});

test('a target without heartbeats refuses a primary that sends them, naming both sides', () => {
  refused(() => agreeHeartbeats(primary, undefined), /primary heartbeat interval 100 ms, stale after 400 ms/, /mirror heartbeats off/);
});

test('a primary whose stale time is not longer than its interval is refused, naming both sides', () => {
  refused(() => agreeHeartbeats({ interval: 500, staleAfter: 500 }, mirror), /primary heartbeat interval 500 ms, stale after 500 ms/, /mirror heartbeat interval 1500 ms, stale after 4000 ms/);
});

test('the primary accepts only its own settings back in READY', () => {
  checkAgreedHeartbeats(primary, { ...primary });
  refused(() => checkAgreedHeartbeats(primary, mirror), /primary heartbeat interval 100 ms, stale after 400 ms/, /mirror heartbeat interval 1500 ms, stale after 4000 ms/);
  refused(() => checkAgreedHeartbeats(primary, undefined), /primary heartbeat interval 100 ms/, /did not confirm/);
});

test('a settings refusal is a configuration refusal (the primary stops retrying fast and the CLI exits)', () => {
  assert.ok(CONFIGURATION_REFUSALS.has('BM_ERR_SETTINGS_MISMATCH'));
  assert.equal(describeHeartbeats(undefined), 'heartbeats off');
});

test('HELLO and READY carry the settings; bad values are BM_ERR_BAD_HEADER', () => {
  const hello = { protocol: [1, 1], node: 'p', session: 's', slot: 0, slots: 1, features: [], nonce: new Uint8Array(32) };
  assert.equal(parseHello({ ...hello, hb: 7000, hbi: 100, hbs: 400 }).hbi, 100);
  assert.equal(parseHello({ ...hello, hb: 7000 }).hbi, undefined, 'an older primary announces no settings');
  for (const bad of [{ hbi: 100, hbs: 400 }, { hb: 7000, hbi: 100 }, { hb: 7000, hbi: 0, hbs: 400 }, { hb: 7000, hbi: 100, hbs: 2 ** 31 }, { hb: 7000, hbi: 1.5, hbs: 400 }]) {
    assert.throws(() => parseHello({ ...hello, ...bad }), { code: 'BM_ERR_BAD_HEADER' }, JSON.stringify(bad));
  }
  assert.deepEqual(parseReady({ volumes: [], hbi: 100, hbs: 400 }), { volumes: [], hbi: 100, hbs: 400 });
  for (const bad of [{ hbi: 100 }, { hbs: 400 }, { hbi: -1, hbs: 400 }, { hbi: '100', hbs: 400 }]) {
    assert.throws(() => parseReady({ volumes: [], ...bad }), { code: 'BM_ERR_BAD_HEADER' }, JSON.stringify(bad));
  }
});
