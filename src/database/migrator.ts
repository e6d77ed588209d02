import { createHash, randomUUID } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import { projectPath } from '../paths.ts'

/**
 * Applies prisma/migrations/<name>/migration.sql in order. Prisma's `migrate deploy`
 * needs a native engine that cannot be installed everywhere this service runs, so we
 * apply the same files ourselves and keep `_prisma_migrations` in Prisma's format:
 * where the engine is available, `prisma migrate deploy` sees them as applied.
 */
export const MIGRATIONS_DIR = projectPath('prisma', 'migrations') + '/'

// Any constant works; it only has to be the same in every replica.
const MIGRATION_LOCK = 727_130_402

export interface MigrationResult {
  applied: string[]
  alreadyApplied: string[]
}

export async function migrate(databaseUrl: string, dir = MIGRATIONS_DIR): Promise<MigrationResult> {
  const migrations = await readMigrations(dir)
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    // Replicas starting together: one migrates, the others wait and find nothing to do.
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
    await client.query(`CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
      "id" VARCHAR(36) PRIMARY KEY NOT NULL,
      "checksum" VARCHAR(64) NOT NULL,
      "finished_at" TIMESTAMPTZ,
      "migration_name" VARCHAR(255) NOT NULL,
      "logs" TEXT,
      "rolled_back_at" TIMESTAMPTZ,
      "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
      "applied_steps_count" INTEGER NOT NULL DEFAULT 0)`)
    const { rows } = await client.query<{ migration_name: string; checksum: string }>(
      'SELECT migration_name, checksum FROM "_prisma_migrations" WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL',
    )
    const done = new Map(rows.map((r) => [r.migration_name, r.checksum]))
    const result: MigrationResult = { applied: [], alreadyApplied: [] }
    for (const m of migrations) {
      const recorded = done.get(m.name)
      if (recorded !== undefined) {
        if (recorded !== m.checksum) throw new Error(`migration ${m.name} was edited after it was applied (checksum differs)`)
        result.alreadyApplied.push(m.name)
        continue
      }
      await client.query('BEGIN')
      try {
        await client.query(m.sql)
        await client.query(
          `INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count)
           VALUES ($1, $2, now(), $3, 1)`,
          [randomUUID(), m.checksum, m.name],
        )
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK')
        throw new Error(`migration ${m.name} failed: ${(err as Error).message}`)
      }
      result.applied.push(m.name)
    }
    return result
  } finally {
    await client.end()
  }
}

async function readMigrations(dir: string) {
  const names = (await readdir(dir, { withFileTypes: true }))
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort()
  return Promise.all(
    names.map(async (name) => {
      const sql = await readFile(join(dir, name, 'migration.sql'), 'utf8')
      return { name, sql, checksum: createHash('sha256').update(sql).digest('hex') }
    }),
  )
}
