/**
 * Compliance suites and fault-injecting adapters, for testing blockmirror and
 * your own {@link BlockDevice} / {@link Transport} implementations.
 *
 * @module blockmirror/testing
 */
export {};
