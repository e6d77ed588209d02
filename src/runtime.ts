import { resolve } from 'node:path'
import type { S3Client } from '@aws-sdk/client-s3'
import pino, { type Logger } from 'pino'
import { REDACTED_PATHS } from './app.ts'
import type { Config } from './config.ts'
import { PostgresChangeFeed } from './database/change-feed.ts'
import { openDatabase, type SqlPool } from './database/client.ts'
import { SharedTokenBucket } from './database/shared-token-bucket.ts'
import { startEmbeddedPostgres } from './database/embedded-postgres.ts'
import { migrate } from './database/migrator.ts'
import { loadLeaseTokenSecret } from './services/auth.ts'
import { DatabaseClock, type Clock } from './services/clock.ts'
import { createServices } from './services/index.ts'
import { PreflightService } from './services/preflight.ts'
import type { S3Sender } from './services/snapshots/snapshot-service.ts'
import type { Launcher } from './services/launchers/launcher.ts'
import { ProcessLauncher } from './services/launchers/process-launcher.ts'
import { createWorkers } from './workers/index.ts'

export function createLogger(level: string): Logger {
  return pino({ level, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } })
}

/** S3 for s3:// snapshots, its SDK loaded on first use (see SnapshotService): file://-only deployments never load it. */
export function createS3(config: Config): S3Sender {
  let client: Promise<S3Client> | undefined
  const connect = () =>
    (client ??= import('@aws-sdk/client-s3').then(
      ({ S3Client }) => new S3Client({ region: config.awsRegion, ...(config.s3Endpoint ? { endpoint: config.s3Endpoint, forcePathStyle: true } : {}) }),
    ))
  return { send: ((command: Parameters<S3Client['send']>[0]) => connect().then((s3) => s3.send(command))) as S3Client['send'] }
}

export async function createLauncher(config: Config, logger: Logger, clock: Clock, sql: SqlPool): Promise<Launcher> {
  if (config.launcher === 'fargate') {
    // Loaded only when used: the ECS SDK costs the process launcher's users ~22 MB of RSS.
    const [{ ECSClient }, { SecretsManagerClient }, { FargateLauncher }, { SessionSecretStore }, { inProcessEc2, oneShotEc2 }] = await Promise.all([
      import('@aws-sdk/client-ecs'),
      import('@aws-sdk/client-secrets-manager'),
      import('./services/launchers/fargate-launcher.ts'),
      import('./services/launchers/session-secrets.ts'),
      import('./services/launchers/ec2-calls.ts'),
    ])
    const { ecs } = config
    const ec2Config = { region: config.awsRegion, ...(ecs.ec2Endpoint ? { endpoint: ecs.ec2Endpoint } : {}) }
    const secretsManager = new SecretsManagerClient({ region: config.awsRegion, ...(ecs.secretsManagerEndpoint ? { endpoint: ecs.secretsManagerEndpoint } : {}) })
    return new FargateLauncher({
      secrets: new SessionSecretStore(secretsManager, { prefix: ecs.secretPrefix, taskRoleId: ecs.taskRoleId! }),
      ecs: new ECSClient({ region: config.awsRegion, ...(ecs.endpoint ? { endpoint: ecs.endpoint } : {}) }),
      // Public IPs are looked up every pass: the SDK is worth keeping. Without them only the
      // preflight uses EC2, from a short-lived process (ec2-calls.ts).
      ec2: ecs.assignPublicIp ? inProcessEc2(ec2Config) : oneShotEc2(ec2Config),
      settings: {
        cluster: ecs.cluster!,
        taskDefinition: ecs.taskDefinition!,
        containerName: ecs.containerName,
        subnets: ecs.subnets,
        securityGroups: ecs.securityGroups,
        assignPublicIp: ecs.assignPublicIp,
        capacityProviders: ecs.capacityProviders,
        chromaPort: ecs.chromaPort,
        startedBy: ecs.startedBy,
        launchRate: ecs.launchRate,
        launchBurst: ecs.launchBurst,
      },
      logger,
      clock,
      // ECS's RunTask rate is per account: every replica draws from one bucket.
      limiter: new SharedTokenBucket(sql, 'ecs-run-task', ecs.launchRate, ecs.launchBurst),
    })
  }
  return new ProcessLauncher({
    rootDir: resolve(config.dataDir, 'sessions'),
    snapshotRoot: config.snapshotRoot,
    s3Endpoint: config.s3Endpoint,
    // Local sessions read s3:// snapshots with the control plane's own AWS identity.
    env: { AWS_REGION: config.awsRegion, ...awsCredentialEnv() },
    logger,
  })
}

const AWS_CREDENTIAL_VARS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONFIG_FILE']

function awsCredentialEnv(): Record<string, string> {
  return Object.fromEntries(AWS_CREDENTIAL_VARS.flatMap((name) => (process.env[name] ? [[name, process.env[name]!]] : [])))
}

/**
 * Everything the process needs, opened in order and closed in reverse: the database
 * (embedded when DATABASE_URL is unset), migrations, the change feed, the services
 * and the workers. The server and the demo share it.
 */
export async function openRuntime(config: Config, logger: Logger) {
  const embedded = config.databaseUrl ? null : await startEmbeddedPostgres(config.dataDir, logger)
  const databaseUrl = config.databaseUrl ?? embedded!.url
  const migrations = await migrate(databaseUrl)
  if (migrations.applied.length) logger.info({ applied: migrations.applied }, 'database migrated')
  const { db, sql } = openDatabase(databaseUrl)
  const clock = new DatabaseClock(db)
  await clock.sync()
  const changes = await PostgresChangeFeed.connect(databaseUrl, logger)
  const services = createServices({
    db,
    sql,
    clock,
    changes,
    tokenSecret: await loadLeaseTokenSecret(db),
    snapshotRoot: config.snapshotRoot,
    s3: createS3(config),
    saveTimeoutSeconds: config.saveTimeoutSeconds,
    prices: config.prices,
    hold: config.proxyHold,
    logger,
    // A warm agent is replaced at half the sessions' max lifetime, which counts from its launch.
    warmPool: { ...config.warmPool, maxAgeSeconds: Math.floor(config.maxSessionSeconds / 2) },
    limits: {
      leaseTtlSeconds: config.leaseTtlSeconds,
      maxLeaseTtlSeconds: config.maxLeaseTtlSeconds,
      idleTtlSeconds: config.idleTtlSeconds,
      maxIdleTtlSeconds: config.maxIdleTtlSeconds,
      launcher: config.launcher,
    },
  })
  await services.apiKeys.init(config.apiKeys)
  const launcher = await createLauncher(config, logger, clock, sql)
  const workers = createWorkers({
    db,
    clock,
    services,
    launcher,
    logger,
    sql,
    settings: {
      startTimeoutSeconds: config.startTimeoutSeconds,
      maxSessionSeconds: config.maxSessionSeconds,
      drainGraceSeconds: config.leaseTtlSeconds,
      reconcileIntervalSeconds: config.reconcileIntervalSeconds,
      sweepIntervalSeconds: config.sweepIntervalSeconds,
      deadManSeconds: config.sessionDeadManSeconds,
      confirmIntervalSeconds: config.agentConfirmIntervalSeconds,
      retentionDays: config.retentionDays,
    },
  })
  const clockSync = setInterval(() => clock.sync().catch((err) => logger.warn({ err }, 'clock sync failed')), 30_000).unref()
  return {
    db,
    clock,
    changes,
    services,
    launcher,
    preflight: new PreflightService(launcher),
    workers,
    databaseUrl,
    /** Stops this process's parts. Sessions keep running for the next process to adopt. */
    async close() {
      clearInterval(clockSync)
      await workers.stop()
      services.router.close()
      await launcher.close?.()
      await changes.close()
      await db.$disconnect()
      await embedded?.stop()
    },
  }
}
