/**
 * Test helper: a small seeded PRNG for deterministic random inputs — the
 * library's own `seededRandom` (mulberry32), under the name the tests use.
 */
export { seededRandom as prng } from '../../src/transport/memory.js';
