import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { ERROR_CODES } from '../src/errors.js';

test('the README documents every error code with its meaning from ERROR_CODES', async () => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  for (const [code, meaning] of Object.entries(ERROR_CODES)) {
    assert.ok(readme.includes(`| \`${code}\` | ${meaning} |`), `README row for ${code} (regenerate: node --import tsx scripts/error-table.ts)`);
  }
});

test('the README shows the two commands a newcomer runs', async () => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  assert.ok(readme.includes('npm install && npm run demo'));
  assert.ok(readme.includes('npm test'));
});
