/**
 * Mirrors a file-backed volume to a mirror target over TCP on loopback and
 * proves the two image files are identical.
 *
 *   node --import tsx examples/mirror-file.ts
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMirrorTarget, createPrimary, FileBlockDevice } from '../src/index.js';

const SIZE = 64 * 1024 * 1024;
const dir = await mkdtemp(join(tmpdir(), 'blockmirror-example-'));

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

try {
  // The mirror storage server: hosts the copy.
  const mirrorDevice = await FileBlockDevice.open(join(dir, 'mirror.img'), { size: SIZE });
  const target = await createMirrorTarget({
    listen: { host: '127.0.0.1', port: 0 },
    secret: 'example-secret',
    volumes: [{ name: 'vol0', device: mirrorDevice }],
  });
  console.log(`mirror target listening on ${target.address.host}:${target.address.port}`);

  // The primary storage server: owns the volume and mirrors every write. The
  // mirror volume is blank (never paired): an initial sync (by checksums, the
  // default) runs in the background; `initialSync: 'none'` would skip it for
  // two images known to be identical.
  const primaryDevice = await FileBlockDevice.open(join(dir, 'primary.img'), { size: SIZE });
  const primary = await createPrimary({
    peer: target.address,
    secret: 'example-secret',
    connections: 4,
    volumes: [{ name: 'vol0', device: primaryDevice, mode: 'sync' }],
  });
  console.log(`primary connected: link ${primary.link}, ${primary.status().peers[0]!.connections.length} connections`);

  const volume = primary.volume('vol0');
  const started = performance.now();
  let bytes = 0;
  const inFlight: Promise<unknown>[] = [];
  for (let i = 0; i < 2048; i++) {
    const offset = Math.floor(Math.random() * (SIZE / 65536)) * 65536;
    inFlight.push(volume.write(offset, randomBytes(65536)));
    bytes += 65536;
    if (inFlight.length >= 8) await Promise.all(inFlight.splice(0));
  }
  await Promise.all(inFlight);
  await volume.flush();
  const seconds = (performance.now() - started) / 1000;
  console.log(`wrote ${bytes / 1048576} MiB in sync mode in ${seconds.toFixed(2)} s (${(bytes / 1048576 / seconds).toFixed(0)} MiB/s)`);
  // the initial sync done and everything durable on the mirror: in sync, both images up-to-date
  await primary.drain();
  console.log('volume status:', JSON.stringify(volume.status()));

  await primary.close();
  await target.close();
  await primaryDevice.close();
  await mirrorDevice.close();

  const [a, b] = await Promise.all([sha256(join(dir, 'primary.img')), sha256(join(dir, 'mirror.img'))]);
  console.log(`primary.img sha256 ${a}`);
  console.log(`mirror.img  sha256 ${b}`);
  if (a !== b) {
    console.error('images differ');
    process.exitCode = 1;
  } else {
    console.log('images are identical');
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
