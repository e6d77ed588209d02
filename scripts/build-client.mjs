// Builds packages/client (@chroma-lease/client) into packages/client/dist with tsc: run by
// the root postinstall, so `npm ci` leaves the workspace package built, JavaScript and
// declarations. Its types (src/openapi.ts) are committed; `npm run openapi` regenerates them.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
let tsc
try {
  tsc = require.resolve('typescript/bin/tsc')
} catch {
  // production install without devDependencies: nothing in the service imports the client
  process.exit(0)
}
const result = spawnSync(process.execPath, [tsc, '-p', new URL('../packages/client/tsconfig.json', import.meta.url).pathname], { stdio: 'inherit' })
process.exit(result.status ?? 1)
