import { spawn } from 'node:child_process'
import { cp, mkdtemp, rm, stat } from 'node:fs/promises'
import { arch, platform, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { ROOT_CLUSTERS_DIR, startEmbeddedPostgres } from '../src/database/embedded-postgres.ts'
import { migrate } from '../src/database/migrator.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { buildTestApp } from './helpers/app.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'

// As root, the embedded Postgres runs as the `postgres` user. A checkout in a directory
// other users cannot enter (/root, any `mktemp -d`: mode 0700) used to fail with
// `spawn …/initdb EACCES` for `npm start` and `npm test` alike: neither the binaries
// under node_modules nor the cluster under ./.data were within that user's reach.

if (process.getuid?.() !== 0) {
  t.pass('not root: Postgres runs as this user, who can reach its own checkout')
} else {
  const { initdb } = (await import(`@embedded-postgres/${platform()}-${arch()}`)) as { initdb: string }
  const installation = dirname(dirname(initdb))

  t.test('binaries and data directory in private (0700) directories: the cluster starts and the app is ready on it', async (t) => {
    const privateDir = await mkdtemp(join(tmpdir(), 'chroma-lease-private-'))
    t.teardown(() => rm(privateDir, { recursive: true, force: true }))
    t.equal((await stat(privateDir)).mode & 0o777, 0o700, 'mkdtemp makes a directory only its owner can enter')
    // The binaries resolved from a private directory, as in a checkout under /root.
    const copy = join(privateDir, 'postgres')
    await cp(installation, copy, { recursive: true, verbatimSymlinks: true })
    const dataDir = join(privateDir, 'data')

    const db = await startEmbeddedPostgres(dataDir, undefined, { binaries: { initdb: join(copy, 'bin', 'initdb'), postgres: join(copy, 'bin', 'postgres') } })
    t.ok(db.initdb && !db.initdb.startsWith(privateDir), `ran a reachable copy of the binaries (${db.initdb})`)
    t.ok(db.clusterDir.startsWith(`${ROOT_CLUSTERS_DIR}/`), `the cluster lives where the postgres user can reach it (${db.clusterDir})`)

    await migrate(db.url).catch(async (err) => {
      await db.stop()
      throw err
    })
    const ctx = await buildTestApp(t, { databaseUrl: db.url, launcher: new ScriptedLauncher() })
    // After the app's own teardown (its pool), which was registered first.
    t.teardown(async () => {
      await db.stop()
      await rm(db.clusterDir, { recursive: true, force: true })
      if (db.initdb) await rm(dirname(dirname(db.initdb)), { recursive: true, force: true })
    })
    const res = await ctx.app.inject({ method: 'GET', url: '/readyz' })
    t.equal(res.statusCode, 200, '/readyz answers 200 on that database')
  })

  t.test('the server process with its data directory in a private directory starts and answers /readyz', async (t) => {
    const privateDir = await mkdtemp(join(tmpdir(), 'chroma-lease-private-'))
    const port = await freeLoopbackPort()
    const env: NodeJS.ProcessEnv = { ...process.env, DATA_DIR: join(privateDir, 'data'), PORT: String(port), LOG_LEVEL: 'info' }
    delete env.DATABASE_URL // the embedded database
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout!.on('data', (d) => (output += d))
    child.stderr!.on('data', (d) => (output += d))
    t.teardown(async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        await new Promise((r) => child.once('exit', r))
      }
      const cluster = /"cluster":"([^"]+)"/.exec(output)?.[1]
      if (cluster?.startsWith(`${ROOT_CLUSTERS_DIR}/`)) await rm(cluster, { recursive: true, force: true })
      await rm(privateDir, { recursive: true, force: true })
    })
    const deadline = Date.now() + 120_000
    let status = 0
    while (Date.now() < deadline && child.exitCode === null) {
      const res = await request(`http://127.0.0.1:${port}/readyz`).catch(() => null)
      if (res) {
        await res.body.dump()
        status = res.statusCode
        if (status === 200) break
      }
      await new Promise((r) => setTimeout(r, 200))
    }
    t.equal(status, 200, `/readyz answers 200\n${status === 200 ? '' : output}`)
    t.match(output, /the postgres user cannot enter the data directory/, 'the log says where the cluster went')
  })
}
