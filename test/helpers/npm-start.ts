import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * Node's arguments in `npm start` once it has built the bundle (package.json scripts.start,
 * `node scripts/build.mjs && node <args>`): its V8 flags and the bundle, so what spawns the
 * server as `npm start` runs it (test/server.test.ts, the benches) cannot drift from it.
 * The control-plane image's CMD is held to the same script by test/control-plane-image.test.ts.
 * `checkout`: another checkout's (a bench baseline's); this one by default.
 */
export function npmStartNodeArgs(checkout = fileURLToPath(new URL('../..', import.meta.url))): string[] {
  const pkg = JSON.parse(readFileSync(join(checkout, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  const [node, ...args] = pkg.scripts.start!.split(' && ').at(-1)!.split(' ')
  if (node !== 'node' || args.at(-1) !== 'dist/server.js') throw new Error(`npm start does not end in \`node … dist/server.js\`: ${pkg.scripts.start}`)
  return args
}
