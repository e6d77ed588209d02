import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/database/embedded-postgres.ts'
import { freeLoopbackPort } from '../../src/free-port.ts'
import { migrate } from '../../src/database/migrator.ts'

export interface DedicatedPostgres {
  /** A migrated database on this cluster. */
  url: string
  /** Stops the server (fast shutdown: sessions are cut, as in an outage); its data stays. */
  stop(): Promise<void>
  /** Starts it again on the same port. */
  start(): Promise<void>
}

/**
 * A Postgres cluster of the test's own, for tests that stop and restart the database
 * (the shared one in database.ts serves every other test in the process). It listens on
 * the same port across restarts, so pools reconnect to it as they would to RDS. Started
 * as the server starts its own (src/database/embedded-postgres.ts), so it runs as root
 * from a private checkout too.
 */
export async function startDedicatedPostgres(t: { teardown(fn: () => unknown): void }): Promise<DedicatedPostgres> {
  const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-pg-own-'))
  await chmod(dir, 0o755) // the postgres user must reach the cluster directory
  const port = await freeLoopbackPort()
  let db: EmbeddedDatabase | null = await startEmbeddedPostgres(dir, undefined, { port })
  const url = db.url
  await migrate(url)
  t.teardown(async () => {
    await db?.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return {
    url,
    stop: async () => {
      await db?.stop()
      db = null
    },
    start: async () => {
      db = await startOnPort(dir, port)
    },
  }
}

/** Starts the cluster in `dir` on `port` again, waiting out a moment in which the old postmaster's socket lingers. */
export async function startOnPort(dir: string, port: number): Promise<EmbeddedDatabase> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startEmbeddedPostgres(dir, undefined, { port })
    } catch (err) {
      if (attempt > 40) throw err
      await new Promise((r) => setTimeout(r, 250))
    }
  }
}
