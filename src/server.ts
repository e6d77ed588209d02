import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig, loadEnvFile } from './config.ts'
import { createLogger, openRuntime } from './runtime.ts'

/**
 * The process: configuration, database, migrations, workers, listen, and a graceful
 * shutdown that finishes in-flight requests and leaves sessions running, so the
 * next process (or another replica) adopts them.
 */
async function main() {
  let config
  try {
    loadEnvFile()
    config = loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`chroma-lease: ${err.message}`)
      process.exit(1)
    }
    throw err
  }
  const logger = createLogger(config.logLevel)
  const runtime = await openRuntime(config, logger)
  let shuttingDown = false
  const app = await buildApp({
    db: runtime.db,
    clock: runtime.clock,
    services: runtime.services,
    preflight: runtime.preflight,
    publicUrl: config.publicUrl,
    bodyLimitBytes: config.bodyLimitBytes,
    proxyBodyLimitBytes: config.proxyBodyLimitBytes,
    proxyTimeoutSeconds: config.proxyTimeoutSeconds,
    logger,
    isShuttingDown: () => shuttingDown,
  })
  if (!runtime.services.apiKeys.enabled) {
    logger.warn({ host: config.host }, 'no API keys configured: the API-key check is off, so the server listens on loopback only')
  }
  closeWithGrace({ delay: 30_000, logger }, async ({ signal, err }) => {
    shuttingDown = true
    if (err) logger.error({ err }, 'shutting down after an error')
    else logger.info({ signal }, 'shutting down; sessions keep running for the next process')
    await app.close()
    await runtime.close()
  })
  await app.listen({ host: config.host, port: config.port })
  runtime.workers.start()
  // Name every problem with the launch setup at start; the service still runs (AWS may be briefly unreachable).
  void runtime.preflight.run().then(
    (report) => {
      for (const c of report.checks) (c.ok ? logger.info : logger.error).call(logger, { check: c.name, detail: c.detail }, c.ok ? 'preflight ok' : 'preflight failed')
    },
    (err) => logger.error({ err }, 'preflight could not run'),
  )
  logger.info({ launcher: config.launcher, database: config.databaseUrl ? 'DATABASE_URL' : 'embedded' }, 'chroma-lease ready')
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
