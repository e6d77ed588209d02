import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t from 'tap'
import { freeLoopbackPort } from '../src/free-port.ts'

// `.env` works (issue 17, item 5): the server started in a directory holding a copy of
// .env.example takes its settings from it, and the real environment wins over the file.

const root = await mkdtemp(join(tmpdir(), 'env-file-'))
await chmod(root, 0o755) // the embedded Postgres runs as the postgres user
t.teardown(() => rm(root, { recursive: true, force: true }))

t.test('a copy of .env.example is read at start; the real environment wins', async (t) => {
  const port = await freeLoopbackPort()
  // The example as a user copies it, with a port of its own (8080 may be taken here).
  const example = readFileSync('.env.example', 'utf8')
  t.match(example, /^PORT=8080$/m)
  t.match(example, /^DATA_DIR=\.data$/m)
  await writeFile(join(root, '.env'), example.replace(/^PORT=8080$/m, `PORT=${port}`))
  const realDataDir = join(root, 'data-from-the-environment')

  const env: Record<string, string> = { PATH: process.env.PATH!, HOME: process.env.HOME ?? root, DATA_DIR: realDataDir }
  const server = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), resolve('src/server.ts')], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  server.stdout!.on('data', (d) => (output += d))
  server.stderr!.on('data', (d) => (output += d))
  t.teardown(async () => {
    if (server.exitCode === null) {
      server.kill('SIGTERM')
      await once(server, 'exit')
    }
  })

  const deadline = Date.now() + 120_000
  let ready = false
  while (!ready && server.exitCode === null && Date.now() < deadline) {
    ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false)
    if (!ready) await new Promise((r) => setTimeout(r, 200))
  }
  t.ok(ready, `the server listens on the PORT from .env (${port})`, { output })
  t.ok(existsSync(join(realDataDir, 'postgres')), 'DATA_DIR from the real environment, not .env, holds the embedded Postgres')
  t.notOk(existsSync(join(root, '.data')), ".env's DATA_DIR=.data lost to the environment")
})
