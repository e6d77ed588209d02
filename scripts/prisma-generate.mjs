// Runs `prisma generate` offline. Prisma's CLI tries to download its native schema
// engine before any command, although `generate` itself runs on WebAssembly; pointing
// PRISMA_SCHEMA_ENGINE_BINARY at any existing file skips that download.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
let cli
try {
  cli = require.resolve('prisma/build/index.js')
} catch {
  // production install without devDependencies: the client was generated at build time
  process.exit(0)
}
const env = { ...process.env, PRISMA_HIDE_UPDATE_MESSAGE: '1' }
env.PRISMA_SCHEMA_ENGINE_BINARY ??= process.execPath
const result = spawnSync(process.execPath, [cli, 'generate'], { stdio: 'inherit', env })
process.exit(result.status ?? 1)
