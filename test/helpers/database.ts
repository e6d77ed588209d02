import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/database/embedded-postgres.ts'
import { migrate } from '../../src/database/migrator.ts'

/**
 * A real Postgres for tests: TEST_DATABASE_URL when set (a server the caller runs),
 * otherwise one embedded cluster per test process. Every call makes a fresh, migrated
 * database, so tests never see each other's rows.
 */
let server: Promise<{ url: string; stop: () => Promise<void> }> | null = null
let counter = 0

function startServer() {
  if (process.env.TEST_DATABASE_URL) return Promise.resolve({ url: process.env.TEST_DATABASE_URL, stop: async () => {} })
  return (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-pg-'))
    await chmod(dir, 0o755) // the postgres user must reach the cluster directory
    const db: EmbeddedDatabase = await startEmbeddedPostgres(dir)
    const stop = async () => {
      await db.stop()
      await rm(dir, { recursive: true, force: true })
    }
    process.once('exit', () => {
      // last resort if a test forgot: the cluster must not outlive the test process
      void stop()
    })
    return { url: db.url, stop }
  })()
}

export async function freshDatabaseUrl(opts: { migrated?: boolean } = {}): Promise<string> {
  server ??= startServer()
  const { url } = await server
  const name = `t_${process.pid}_${++counter}_${Date.now().toString(36)}`
  const admin = new pg.Client({ connectionString: url })
  await admin.connect()
  await admin.query(`CREATE DATABASE "${name}"`)
  await admin.end()
  const u = new URL(url)
  u.pathname = `/${name}`
  if (opts.migrated !== false) await migrate(u.toString())
  return u.toString()
}

/** Stops the embedded cluster; call from a top-level teardown. */
export async function stopTestDatabase(): Promise<void> {
  if (!server) return
  const s = await server
  server = null
  await s.stop()
}
