#!/usr/bin/env node
/**
 * Entry point of the `blockmirror` executable (`dist/cli/main.js`).
 *
 * @module
 */
import { run } from './run.js';

const code = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env });
process.exitCode = code;
// Everything is closed by now and the process exits by itself; should a
// handle linger anyway, do not hang.
setTimeout(() => process.exit(code), 2000).unref();
