/**
 * The session agent: what runs inside every session (a Fargate task, or a local child
 * process of the ProcessLauncher). It restores a snapshot into a data directory, runs
 * the Chroma server on it, and on SIGTERM/SIGINT stops Chroma gracefully and deletes
 * the directory.
 *
 *   node --import tsx container/agent/main.ts --session <sessionId> [--generation <n>]
 *
 * Environment (the contract with the launchers):
 *   SESSION_ID       the session id; optional when --session is given, must agree with it
 *   SNAPSHOT_URI     required. file:///abs/dir, file:///abs/snap.tar|.tar.gz|.tgz,
 *                    s3://bucket/key.tar|.tar.gz|.tgz (an archive object), or
 *                    s3://bucket/prefix (every object under prefix/ is a file of the
 *                    persist directory). .tar.zst fails clearly on Node 20 (no zstd in zlib).
 *   COLLECTION       optional. A collection that must exist in the snapshot; the agent
 *                    fails if Chroma does not have it once it is up.
 *   CHROMA_DATA_DIR  required. Where the snapshot is restored and Chroma persists. Must
 *                    be empty or absent: the agent deletes it when it exits.
 *   CHROMA_HOST      the address Chroma listens on (default 127.0.0.1; 0.0.0.0 on Fargate)
 *   CHROMA_PORT      required. Chroma's port.
 *   STATUS_FILE      optional. A JSON file the agent replaces atomically on every change:
 *                    {phase, bytes?, totalBytes?, percent?, error?, pid, chromaPid?, at}
 *                    with phase restoring | starting | ready | stopping | exited | failed.
 *   SNAPSHOT_ROOT    optional. When set, file:// snapshots must lie under it (after
 *                    resolving symlinks).
 *   S3_ENDPOINT      optional. An S3-compatible endpoint (path-style addressing).
 *   AWS_REGION       default us-east-1. AWS credentials come from the SDK's default chain
 *                    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, task role).
 *
 * Exit status: 0 after a requested stop, 1 when the session failed (the reason is in
 * STATUS_FILE and the log), 2 for invalid settings. The log is plain lines on
 * stdout/stderr, Chroma's own output included.
 */
import { mkdir, readdir, rm } from 'node:fs/promises'
import { once } from 'node:events'
import { ChromaServer, describeExit } from './chroma-process.ts'
import { AgentConfigError, readAgentConfig, type AgentConfig } from './config.ts'
import { restoreSnapshot, RestoreError } from './restore.ts'
import { StatusFile } from './status.ts'

/** Chroma starts in well under a second; a minute means it is stuck. */
const CHROMA_START_TIMEOUT_MS = 60_000
/** Time a SIGINT-ed Chroma gets to close its database before SIGKILL. */
const CHROMA_STOP_TIMEOUT_MS = 10_000

function log(message: string): void {
  process.stdout.write(`${new Date().toISOString()} agent: ${message}\n`)
}

class SessionAgent {
  private readonly stopRequested = new AbortController()
  private readonly status: StatusFile
  private chroma: ChromaServer | undefined
  /** Set once the data directory is known to be ours (it was empty), so deleting it is safe. */
  private ownsDataDir = false

  constructor(private readonly config: AgentConfig) {
    this.status = new StatusFile(config.statusFile, (err) => log(`cannot write STATUS_FILE: ${err.message}`))
  }

  /** Runs the session to its end and returns the process exit code. */
  async run(): Promise<number> {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => {
        if (this.stopRequested.signal.aborted) return // the launcher repeats SIGTERM until we are gone
        log(`${signal} received; stopping`)
        this.stopRequested.abort(new Error(`stopped by ${signal}`))
      })
    }
    const { config } = this
    log(`session ${config.sessionId}${config.generation === undefined ? '' : ` generation ${config.generation}`}: restoring ${config.snapshot} into ${config.dataDir}`)
    try {
      await this.restore()
    } catch (err) {
      if (this.stopRequested.signal.aborted) return this.shutDown()
      return this.fail(err instanceof RestoreError ? err.message : `restoring ${config.snapshot} failed: ${(err as Error).message}`)
    }
    if (this.stopRequested.signal.aborted) return this.shutDown()

    const chroma = this.startChroma()
    try {
      await chroma.waitForHeartbeat(CHROMA_START_TIMEOUT_MS, this.stopRequested.signal)
      if (config.collection !== null) await this.assertCollectionExists(chroma, config.collection)
    } catch (err) {
      if (this.stopRequested.signal.aborted) return this.shutDown()
      return this.fail(withStderr((err as Error).message, chroma))
    }
    await this.status.write({ phase: 'ready', chromaPid: chroma.pid })
    log(`ready: chroma (pid ${chroma.pid}) serves ${chroma.url}`)

    const outcome = await Promise.race([
      chroma.exited.then((exit) => ({ exit })),
      once(this.stopRequested.signal, 'abort').then(() => ({ exit: null })),
    ])
    if (outcome.exit && !this.stopRequested.signal.aborted) {
      return this.fail(withStderr(`chroma exited unexpectedly (${describeExit(outcome.exit)})`, chroma))
    }
    return this.shutDown()
  }

  private async restore(): Promise<void> {
    await this.status.write({ phase: 'restoring', bytes: 0 })
    await claimEmptyDir(this.config.dataDir)
    this.ownsDataDir = true
    await restoreSnapshot(this.config.snapshot, this.config.dataDir, {
      snapshotRoot: this.config.snapshotRoot,
      s3: this.config.s3,
      signal: this.stopRequested.signal,
      onProgress: (bytes, totalBytes) => void this.status.progress(bytes, totalBytes),
    })
    log('snapshot restored')
  }

  private startChroma(): ChromaServer {
    const { dataDir, host, port } = this.config
    this.chroma = ChromaServer.start({ dataDir, host, port, onStderr: (chunk) => process.stderr.write(chunk) })
    void this.status.write({ phase: 'starting', chromaPid: this.chroma.pid })
    log(`starting chroma (pid ${this.chroma.pid}) on ${host}:${port}`)
    return this.chroma
  }

  private async assertCollectionExists(chroma: ChromaServer, collection: string): Promise<void> {
    const path = `/api/v2/tenants/default_tenant/databases/default_database/collections/${encodeURIComponent(collection)}`
    const res = await fetch(`${chroma.url}${path}`, { signal: AbortSignal.timeout(10_000) })
    await res.body?.cancel()
    if (res.status === 404) throw new Error(`collection ${JSON.stringify(collection)} is not in snapshot ${this.config.snapshot}`)
    if (!res.ok) throw new Error(`chroma answered ${res.status} when asked for collection ${JSON.stringify(collection)}`)
  }

  /** The requested stop: Chroma down gracefully, data gone, exit 0. */
  private async shutDown(): Promise<number> {
    await this.status.write({ phase: 'stopping', chromaPid: this.chroma?.pid })
    await this.releaseResources()
    await this.status.write({ phase: 'exited' })
    log('stopped')
    return 0
  }

  private async fail(reason: string): Promise<number> {
    log(`failed: ${reason}`)
    await this.releaseResources()
    await this.status.write({ phase: 'failed', error: reason })
    return 1
  }

  private async releaseResources(): Promise<void> {
    if (this.chroma) {
      const exit = await this.chroma.stop(CHROMA_STOP_TIMEOUT_MS)
      log(`chroma stopped (${describeExit(exit)})`)
    }
    if (this.ownsDataDir) await rm(this.config.dataDir, { recursive: true, force: true })
  }
}

/** Creates `dir`, or accepts it when empty; the agent deletes it on exit, so it must hold nothing else. */
async function claimEmptyDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true })
  if ((await readdir(dir)).length > 0) {
    throw new RestoreError(`CHROMA_DATA_DIR ${dir} is not empty; the agent restores into an empty directory only, because it deletes it on exit`)
  }
}

/** A failure reason, with the end of Chroma's stderr when Chroma died (it says why). */
function withStderr(reason: string, chroma: ChromaServer): string {
  const lines = chroma.hasExited ? chroma.lastStderrLines() : []
  return lines.length ? `${reason}; chroma's stderr ends with: ${lines.join(' | ')}` : reason
}

async function main(): Promise<number> {
  let config: AgentConfig
  try {
    config = readAgentConfig(process.argv.slice(2), process.env)
  } catch (err) {
    if (!(err instanceof AgentConfigError) && !(err instanceof TypeError)) throw err
    log(`invalid settings: ${err.message}`)
    await new StatusFile(process.env.STATUS_FILE, () => {}).write({ phase: 'failed', error: `invalid agent settings: ${err.message}` })
    return 2
  }
  return new SessionAgent(config).run()
}

// Exit explicitly: idle keep-alive sockets (S3, fetch) must not hold the process open.
process.exit(await main())
