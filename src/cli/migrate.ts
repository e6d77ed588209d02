import { loadConfig, loadEnvFile } from '../config.ts'
import { startEmbeddedPostgres } from '../database/embedded-postgres.ts'
import { migrate } from '../database/migrator.ts'

/** `npm run migrate`: applies prisma/migrations to DATABASE_URL (or the embedded database). */
loadEnvFile()
const config = loadConfig()
const embedded = config.databaseUrl ? null : await startEmbeddedPostgres(config.dataDir)
try {
  const result = await migrate(config.databaseUrl ?? embedded!.url)
  console.log(`applied ${result.applied.length} migration(s)${result.applied.length ? `: ${result.applied.join(', ')}` : ''}; ${result.alreadyApplied.length} already applied`)
} finally {
  await embedded?.stop()
}
