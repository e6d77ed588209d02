import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { buildApp } from '../../src/app.ts'
import type { ApiKeySeed } from '../../src/config.ts'
import { PostgresChangeFeed, type ChangeFeed } from '../../src/database/change-feed.ts'
import { openDatabase, type Database, type SqlPool } from '../../src/database/client.ts'
import { loadLeaseTokenSecret } from '../../src/services/auth.ts'
import { ManualClock, type Clock } from '../../src/services/clock.ts'
import { createServices, type Services } from '../../src/services/index.ts'
import type { HoldSettings } from '../../src/services/request-hold.ts'
import { PreflightService } from '../../src/services/preflight.ts'
import type { Launcher } from '../../src/services/launchers/launcher.ts'
import { ProcessLauncher } from '../../src/services/launchers/process-launcher.ts'
import { createWorkers, type Workers } from '../../src/workers/index.ts'
import { freshDatabaseUrl, stopTestDatabase } from './database.ts'
import type { S3Fake } from './s3-fake.ts'

export interface TestApp {
  app: FastifyInstance
  db: Database
  /** The same pool as db, for the hot-path statements. */
  sql: SqlPool
  clock: Clock
  services: Services
  workers: Workers
  launcher: Launcher
  databaseUrl: string
  /** The base URL when built with `listen: true`. */
  url: string
  /** The change feed long-polls and held requests wait on. */
  changes: ChangeFeed
}

export interface TestAppOptions {
  /** Share a database with another instance (the two-replica tests). */
  databaseUrl?: string
  clock?: Clock
  apiKeys?: ApiKeySeed[]
  /** 'process' (default): the real ProcessLauncher under a temp dir; or any Launcher. */
  launcher?: Launcher | 'process'
  /** The process launcher's directory (a restarted control plane reuses it). */
  sessionsDir?: string
  snapshotRoot?: string
  leaseTtlSeconds?: number
  idleTtlSeconds?: number
  maxSessionSeconds?: number
  startTimeoutSeconds?: number
  /** Listen on a loopback port (for real HTTP clients); otherwise use app.inject. */
  listen?: boolean
  /** Leave the launched sessions running on teardown (restart-adoption tests). */
  keepSessions?: boolean
  /** An S3 endpoint (test/helpers/s3-fake.ts) for s3:// snapshots: acquire checks and agents read it. */
  s3?: S3Fake
  /** Receives the services' structured log lines (one per session event). */
  logger?: Logger
  /** The agents' dead man's switch and how often the reconciler confirms them (defaults 900 / 60). */
  deadManSeconds?: number
  confirmIntervalSeconds?: number
  /** Extra environment for session agents (e.g. STOP_TIMEOUT_SECONDS). */
  agentEnv?: Record<string, string>
  /** The API's and the proxy's body limits, and how long the proxy waits for a session (buildApp's defaults). */
  bodyLimitBytes?: number
  proxyBodyLimitBytes?: number
  proxyTimeoutSeconds?: number
  /** How proxied requests and queries wait for a starting session (createServices' default: 50 s, 64 per session). */
  hold?: HoldSettings
  /** The worker loops' intervals (defaults 0.2 and 1 s), for tests of their scheduled passes. */
  reconcileIntervalSeconds?: number
  sweepIntervalSeconds?: number
  /** WARM_POOL_MIN/MAX (and the age a warm agent is replaced at); none: no warm pool. */
  warmPool?: { min: number; max: number; maxAgeSeconds?: number }
}

let topTeardownRegistered = false

/**
 * Builds the real app, as src/server.ts does, on a real Postgres with a manual clock,
 * and tears it all down with the test. Workers are built but not started: tests run
 * their passes explicitly (workers.reconciler.reconcileOnce(), ...) after moving the clock.
 */
export async function buildTestApp(t: Test, opts: TestAppOptions = {}): Promise<TestApp> {
  if (!topTeardownRegistered) {
    topTeardownRegistered = true
    const tap = (await import('tap')).default
    tap.teardown(stopTestDatabase)
  }
  const databaseUrl = opts.databaseUrl ?? (await freshDatabaseUrl())
  const { db, sql } = openDatabase(databaseUrl, 10)
  const clock = opts.clock ?? new ManualClock()
  const changes = await PostgresChangeFeed.connect(databaseUrl)
  const snapshotRoot = opts.snapshotRoot ?? tmpdir()
  const services = createServices({
    db,
    sql,
    clock,
    changes,
    tokenSecret: await loadLeaseTokenSecret(db),
    snapshotRoot,
    s3: opts.s3?.client,
    logger: opts.logger,
    ...(opts.warmPool ? { warmPool: { maxAgeSeconds: 21_600, ...opts.warmPool } } : {}),
    hold: opts.hold,
    limits: {
      leaseTtlSeconds: opts.leaseTtlSeconds ?? 300,
      maxLeaseTtlSeconds: 86400,
      idleTtlSeconds: opts.idleTtlSeconds ?? 300,
      maxIdleTtlSeconds: 3600,
      launcher: opts.launcher && opts.launcher !== 'process' ? opts.launcher.kind : 'process',
    },
  })
  await services.apiKeys.init(opts.apiKeys ?? [])
  let sessionsDir: string | null = null
  let launcher: Launcher
  if (opts.launcher && opts.launcher !== 'process') {
    launcher = opts.launcher
  } else {
    sessionsDir = opts.sessionsDir ?? (await mkdtemp(join(tmpdir(), 'chroma-lease-sessions-')))
    launcher = new ProcessLauncher({ rootDir: sessionsDir, snapshotRoot, stopGraceMs: 5_000, s3Endpoint: opts.s3?.endpoint, env: { ...opts.s3?.env, ...opts.agentEnv } })
  }
  const workers = createWorkers({
    db,
    clock,
    services,
    launcher,
    sql,
    settings: {
      startTimeoutSeconds: opts.startTimeoutSeconds ?? 120,
      maxSessionSeconds: opts.maxSessionSeconds ?? 43200,
      drainGraceSeconds: opts.leaseTtlSeconds ?? 300,
      reconcileIntervalSeconds: opts.reconcileIntervalSeconds ?? 0.2,
      sweepIntervalSeconds: opts.sweepIntervalSeconds ?? 1,
      deadManSeconds: opts.deadManSeconds,
      confirmIntervalSeconds: opts.confirmIntervalSeconds,
    },
  })
  const app = await buildApp({
    db,
    clock,
    services,
    preflight: new PreflightService(launcher),
    bodyLimitBytes: opts.bodyLimitBytes,
    proxyBodyLimitBytes: opts.proxyBodyLimitBytes,
    proxyTimeoutSeconds: opts.proxyTimeoutSeconds,
  })
  let url = ''
  if (opts.listen) url = await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => {
    await app.close()
    await workers.stop()
    services.router.close()
    if (!opts.keepSessions && launcher instanceof ProcessLauncher) await stopAll(launcher)
    await changes.close()
    await db.$disconnect()
    if (sessionsDir && !opts.sessionsDir && !opts.keepSessions) await rm(sessionsDir, { recursive: true, force: true })
  })
  return { app, db, sql, clock, services, workers, launcher, databaseUrl, url, changes }
}

/** Stops every session process a launcher started and waits for them to go. */
export async function stopAll(launcher: Launcher, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const running = await launcher.listRunning()
    if (running.length === 0 || Date.now() > deadline) return
    await Promise.all(running.map((r) => launcher.stop(r, 'test teardown')))
    await new Promise((r) => setTimeout(r, 200))
  }
}

/** Reconciler passes (real time: agents really start) until `ready` warm agents are READY; the pool's state then. */
export async function untilWarmReady(t: TestApp, ready: number, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await t.workers.reconciler.reconcileOnce()
    const state = await t.services.warmPool.state()
    if (state.counts.ready >= ready) return state
    if (Date.now() > deadline) throw new Error(`warm pool: ${JSON.stringify(state.counts)} after ${timeoutMs} ms, wanted ${ready} READY`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Runs reconciler passes until the session leaves PENDING/STARTING (real time: Chroma is really starting). */
export async function reconcileUntilSettled(t: TestApp, sessionId: string, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await t.workers.reconciler.reconcileOnce()
    const s = await t.services.sessions.get(sessionId)
    if (s.status !== 'PENDING' && s.status !== 'STARTING') return s
    if (Date.now() > deadline) throw new Error(`session ${sessionId} still ${s.status} after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 150))
  }
}
