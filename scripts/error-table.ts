/**
 * Prints the README's error-code table from `ERROR_CODES` (the single source):
 *   node --import tsx scripts/error-table.ts
 */
import { ERROR_CODES } from '../src/errors.js';

console.log('| code | meaning |');
console.log('|---|---|');
for (const [code, meaning] of Object.entries(ERROR_CODES)) console.log(`| \`${code}\` | ${meaning} |`);
