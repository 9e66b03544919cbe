/**
 * The `blockmirror` command: parses the command line, runs the command, and
 * turns any error into one stderr line and an exit status.
 *
 * @module
 */
import createDebug from 'debug';
import { parseCommandLine } from './args.js';
import { runDemo } from './demo.js';
import { exitCodeFor, formatError } from './errors.js';
import { runMirror } from './mirror.js';
import { runPrimary } from './primary.js';
import { runCyclePrimary } from './cycle-primary.js';
import { packageVersion, type CliIo } from './runtime.js';
import { runStatus } from './status.js';
import { runRoleCommand } from './role-command.js';

const log = createDebug('blockmirror:cli');

/**
 * Runs `blockmirror <argv…>` and resolves with the exit status: 0 on success
 * (servers: after a clean SIGINT/SIGTERM shutdown), 2 for usage errors, 1 for
 * runtime errors. Never rejects: errors are written to `io.stderr` as
 * `blockmirror: <code>: <message>` (with the stack when `DEBUG` is set).
 */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  try {
    const command = parseCommandLine(argv);
    log('command %s', command.kind);
    switch (command.kind) {
      case 'help':
        io.stdout.write(command.text);
        return 0;
      case 'version':
        io.stdout.write(`blockmirror ${packageVersion()}\n`);
        return 0;
      case 'mirror':
        return await runMirror(command.config, io);
      case 'primary':
        return await (command.config.mode === 'cycle' ? runCyclePrimary(command.config, io) : runPrimary(command.config, io));
      case 'status':
        return await runStatus(command.config, io);
      case 'resolve':
      case 'promote':
      case 'demote':
        return await runRoleCommand(command.kind, command.config, io);
      case 'demo':
        return await runDemo(io);
    }
  } catch (error) {
    io.stderr.write(formatError(error, (io.env.DEBUG ?? '') !== ''));
    return exitCodeFor(error);
  }
}
