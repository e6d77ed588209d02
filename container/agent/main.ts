/**
 * The session agent: what runs inside every session (a Fargate task, or a local child
 * process of the ProcessLauncher). It restores a snapshot into a data directory, runs
 * the Chroma server on it on loopback, and fronts it on the session's address, passing
 * only requests that carry the session token. It can save the directory back as a new
 * snapshot version, stops itself when the control plane stops confirming it (the dead
 * man's switch), and on SIGTERM/SIGINT stops Chroma gracefully (saving first when
 * asked) and deletes the directory.
 *
 *   node --import tsx container/agent/main.ts --session <sessionId> [--generation <n>]
 *
 * Environment (the contract with the launchers; README "The session agent"):
 *   SESSION_ID       the session id; optional when --session is given, must agree with it
 *   SESSION_SECRET_FILE  a JSON file {sessionToken, controlToken, leaseKey} (0600, written by
 *                    the process launcher), read and deleted at start; or
 *   SESSION_SECRET_ID    the Secrets Manager secret holding that document (Fargate), read with
 *                    the task role, which may read it only once the control plane has tagged
 *                    it for this task (waited for up to SESSION_SECRET_WAIT_SECONDS, default
 *                    120; SECRETS_MANAGER_ENDPOINT overrides the endpoint); or, by hand only,
 *   SESSION_TOKEN, CONTROL_TOKEN (16+ characters, different) and optionally LEASE_KEY.
 *                    The session token is the control plane's own credential (its proxy);
 *                    the control token is what POST /_agent/confirm, /_agent/save and
 *                    /_agent/revoke require; lease holders going to the session directly
 *                    carry their lease's token (lease-token.ts), refused once the lease
 *                    expired or was revoked. Every other request gets 401.
 *   WARM             1: a warm pool agent. It starts with no snapshot (SNAPSHOT_URI and
 *                    COLLECTION unset), reports phase `warm`, keeps its dead man's switch,
 *                    and restores only once POST /_agent/assign {snapshot, collection?,
 *                    saveOnStop?} (the control token) names what to serve; the same
 *                    assignment again is answered as before, another one is refused 409.
 *   SNAPSHOT_URI     required unless WARM=1. file:///abs/dir, file:///abs/snap.tar|.tar.gz|.tgz|.tar.zst,
 *                    s3://bucket/key.tar|.tar.gz|.tgz|.tar.zst (an archive object), or
 *                    s3://bucket/prefix: the version its `latest` pointer names when it has
 *                    one (a saved series), else every object under prefix/ is a file of
 *                    the persist directory. A sidecar `<archive>.sha256` or a prefix's
 *                    SHA256SUMS is verified when present.
 *   COLLECTION       optional. A collection that must exist in the snapshot; the agent
 *                    fails if Chroma does not have it once it is up.
 *   CHROMA_DATA_DIR  required. Where the snapshot is restored and Chroma persists. Must
 *                    be empty or absent: the agent deletes it when it exits.
 *   CHROMA_HOST      the session's listen address (default 127.0.0.1; 0.0.0.0 on Fargate)
 *   CHROMA_PORT      required. The session's port (the agent's front; Chroma is behind it).
 *   CHROMA_INTERNAL_PORT  Chroma's own port on 127.0.0.1 (default: any free port).
 *   DEAD_MAN_SECONDS stop when the control plane has not called POST /_agent/confirm for
 *                    this long (default 900).
 *   SAVE_ON_STOP     1: on SIGTERM, save the directory back before stopping.
 *   STOP_TIMEOUT_SECONDS  what a stop may take, saving included (default 110; Fargate's
 *                    stopTimeout is at most 120). A save still running near its end is
 *                    abandoned, leaving the previous version as `latest`.
 *   STATUS_FILE      optional. A JSON file the agent replaces atomically on every change
 *                    (container/agent/status.ts): {phase, bytes?, totalBytes?, percent?,
 *                    error?, restored?, lastSave?, saveError?, stopReason?, pid, chromaPid?, at}
 *                    with phase restoring | starting | ready | saving | stopping | exited | failed.
 *   SNAPSHOT_ROOT    optional. When set, file:// snapshots must lie under it (after
 *                    resolving symlinks).
 *   S3_ENDPOINT      optional. An S3-compatible endpoint (path-style addressing).
 *   AWS_REGION       default us-east-1. AWS credentials come from the SDK's default chain
 *                    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, task role).
 *
 * Its own endpoints, on the session's port: GET /_agent/status (any valid token),
 * GET /_agent/health (no token: only whether the agent is healthy, for the image's
 * HEALTHCHECK), POST /_agent/confirm (the dead man's switch; answers the status),
 * POST /_agent/save and POST /_agent/revoke ({leases: [{id, expiresAt}]}: those leases'
 * tokens are refused from now on) (the control token only).
 *
 * Exit status: 0 after a requested stop (signal or dead man's switch), 1 when the
 * session failed (the reason is in STATUS_FILE and the log), 2 for invalid settings.
 * The log is plain lines on stdout/stderr, Chroma's own output included.
 */
import { mkdir, readdir, rm } from 'node:fs/promises'
import { once } from 'node:events'
import { freeLoopbackPort } from '../../src/free-port.ts'
import { parseSnapshotUri } from '../../src/services/snapshots/uri.ts'
import { ChromaServer, describeExit } from './chroma-process.ts'
import { AgentConfigError, readAgentConfig, type AgentConfig } from './config.ts'
import { loadSessionSecrets, type SessionSecrets } from './secrets.ts'
import { DeadMansSwitch } from './dead-man.ts'
import { AgentFront, AgentHttpError, type Assignment } from './front.ts'
import { restoreSnapshot, RestoreError } from './restore.ts'
import { saveSnapshot, SaveError, type SaveResult } from './save.ts'
import { StatusFile, type AgentStatus } from './status.ts'
import { UsageMeter } from './usage.ts'

/** Chroma starts in well under a second; a minute means it is stuck. */
const CHROMA_START_TIMEOUT_MS = 60_000
/** Time a SIGINT-ed Chroma gets to close its database before SIGKILL. */
const CHROMA_STOP_TIMEOUT_MS = 10_000

function log(message: string): void {
  process.stdout.write(`${new Date().toISOString()} agent: ${message}\n`)
}

class SessionAgent {
  private readonly stopRequested = new AbortController()
  /** Cuts a save short once the stop timeout is nearly spent: Fargate SIGKILLs at its end. */
  private readonly stopDeadline = new AbortController()
  private readonly status: StatusFile
  private readonly usage = new UsageMeter()
  private readonly front: AgentFront
  private readonly deadMan: DeadMansSwitch
  private chroma: ChromaServer | undefined
  private chromaPort = 0
  /** What to serve: from the settings, or (a warm agent) from POST /_agent/assign. */
  private assignment: Assignment | null
  private resolveAssigned!: (a: Assignment) => void
  private readonly assigned = new Promise<Assignment>((resolve) => (this.resolveAssigned = resolve))
  /** The snapshot actually restored: saves go to its series. */
  private restored = ''
  private saving: Promise<SaveResult> | null = null
  /** Set once the data directory is known to be ours (it was empty), so deleting it is safe. */
  private ownsDataDir = false

  constructor(
    private readonly config: AgentConfig,
    secrets: SessionSecrets,
  ) {
    this.assignment = config.snapshot === null ? null : { snapshot: config.snapshot, collection: config.collection, saveOnStop: config.saveOnStop }
    this.status = new StatusFile(config.statusFile, (err) => log(`cannot write STATUS_FILE: ${err.message}`))
    this.deadMan = new DeadMansSwitch(config.deadManSeconds * 1000, (silentMs) =>
      this.requestStop(`the control plane has not confirmed the session for ${Math.round(silentMs / 1000)}s (dead man's switch)`),
    )
    this.front = new AgentFront({
      host: config.host,
      port: config.port,
      token: secrets.sessionToken,
      controlToken: secrets.controlToken,
      leaseKey: secrets.leaseKey,
      log,
      endpoints: {
        status: () => this.statusWithUsage(),
        confirm: () => {
          this.deadMan.confirm()
          return this.statusWithUsage()
        },
        save: () => this.saveOnRequest(),
        health: () => this.healthy(),
        assign: (a) => this.assign(a),
      },
    })
  }

  /** The image's HEALTHCHECK: Chroma's heartbeat while serving; a restore, start, save or stop in progress is healthy too. */
  private async healthy(): Promise<boolean> {
    const { phase } = this.status.current()
    if (phase !== 'ready') return ['warm', 'restoring', 'starting', 'saving', 'stopping'].includes(phase)
    const chroma = this.chroma
    if (!chroma || chroma.hasExited) return false
    const res = await fetch(`${chroma.url}/api/v2/heartbeat`, { signal: AbortSignal.timeout(2_000) }).catch(() => null)
    await res?.body?.cancel()
    return res?.ok ?? false
  }

  private statusWithUsage(): AgentStatus {
    const status = this.status.current()
    return { ...status, usage: this.usage.read(status.chromaPid) }
  }

  /**
   * POST /_agent/assign: a warm agent learns its snapshot (once). The control plane repeats
   * the call until it sees the restore under way, so the same assignment is answered again.
   */
  private assign(a: Assignment): AgentStatus {
    const current = this.assignment
    if (current) {
      if (current.snapshot === a.snapshot && current.collection === a.collection && current.saveOnStop === a.saveOnStop) return this.statusWithUsage()
      throw new AgentHttpError(409, 'already_assigned', this.config.snapshot === null ? `this agent was assigned ${current.snapshot} already` : 'this agent was started with its snapshot')
    }
    if (this.stopRequested.signal.aborted) throw new AgentHttpError(409, 'session_stopping', 'the agent is stopping')
    this.assignment = a
    log(`assigned ${a.snapshot}${a.collection ? ` (collection ${a.collection})` : ''}`)
    this.resolveAssigned(a)
    return this.statusWithUsage()
  }

  /** Runs the session to its end and returns the process exit code. */
  async run(): Promise<number> {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => this.requestStop(`stopped by ${signal}`))
    }
    const { config } = this
    const session = `session ${config.sessionId}${config.generation === undefined ? '' : ` generation ${config.generation}`}`
    log(config.snapshot === null ? `${session}: warm, waiting for an assignment` : `${session}: restoring ${config.snapshot} into ${config.dataDir}`)
    try {
      await this.front.listen()
    } catch (err) {
      return this.fail(`cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`)
    }
    // Launching the session is the control plane's first confirmation.
    this.deadMan.confirm()
    if (this.assignment === null) {
      this.front.pause('this warm agent has no snapshot yet')
      await this.status.write({ phase: 'warm' })
      const stopped = once(this.stopRequested.signal, 'abort').then(() => null)
      if ((await Promise.race([this.assigned, stopped])) === null) return this.shutDown()
    }
    const work = this.assignment!
    try {
      await this.restore(work.snapshot)
    } catch (err) {
      if (this.stopRequested.signal.aborted) return this.shutDown()
      return this.fail(err instanceof RestoreError ? err.message : `restoring ${work.snapshot} failed: ${(err as Error).message}`)
    }
    if (this.stopRequested.signal.aborted) return this.shutDown()

    try {
      this.chromaPort = config.chromaInternalPort || (await freeLoopbackPort())
      const chroma = await this.startChroma()
      if (work.collection !== null) await this.assertCollectionExists(chroma, work.collection)
    } catch (err) {
      if (this.stopRequested.signal.aborted) return this.shutDown()
      return this.fail(this.chroma ? withStderr((err as Error).message, this.chroma) : (err as Error).message)
    }
    this.front.serve(this.chromaPort)
    await this.status.write({ phase: 'ready', chromaPid: this.chroma?.pid })
    log(`ready: chroma (pid ${this.chroma?.pid}) serves ${this.chroma?.url} behind ${config.host}:${config.port}`)

    const stop = once(this.stopRequested.signal, 'abort').then(() => null)
    for (;;) {
      const chroma = this.chroma!
      const exit = await Promise.race([chroma.exited, stop])
      if (exit === null) break
      // A save stops Chroma on purpose and starts it again.
      if (this.saving) {
        await this.saving.catch(() => {})
        if (this.stopRequested.signal.aborted) break
        if (this.chroma !== chroma && !this.chroma!.hasExited) continue
        return this.fail(withStderr('chroma did not start again after a save', this.chroma!))
      }
      if (this.stopRequested.signal.aborted) break
      return this.fail(withStderr(`chroma exited unexpectedly (${describeExit(exit)})`, chroma))
    }
    return this.shutDown()
  }

  private requestStop(reason: string): void {
    if (this.stopRequested.signal.aborted) return // the launcher repeats SIGTERM until we are gone
    log(`${reason}; stopping`)
    this.deadMan.disarm()
    const { phase, chromaPid } = this.status.current()
    void this.status.write({ phase, chromaPid }, { stopReason: reason })
    const budgetMs = this.config.stopTimeoutSeconds * 1000
    // Leave a quarter of the stop timeout (at most 15 s) for stopping Chroma and exiting.
    setTimeout(() => this.stopDeadline.abort(new Error(`the stop timeout (${this.config.stopTimeoutSeconds}s) is nearly spent`)), Math.max(500, budgetMs - Math.min(15_000, budgetMs / 4))).unref()
    this.stopRequested.abort(new Error(reason))
  }

  private async restore(snapshot: string): Promise<void> {
    this.restored = snapshot
    await this.status.write({ phase: 'restoring', bytes: 0 })
    await claimEmptyDir(this.config.dataDir)
    this.ownsDataDir = true
    this.front.markClean()
    this.restored = await restoreSnapshot(snapshot, this.config.dataDir, {
      snapshotRoot: this.config.snapshotRoot,
      s3: this.config.s3,
      signal: this.stopRequested.signal,
      onProgress: (bytes, totalBytes) => void this.status.progress(bytes, totalBytes),
    })
    await this.status.write({ phase: 'restoring', bytes: this.status.current().bytes, totalBytes: this.status.current().totalBytes, percent: 100 }, { restored: this.restored })
    log(this.restored === snapshot ? 'snapshot restored' : `snapshot restored: ${this.restored}`)
  }

  /** Starts Chroma on loopback, behind the front, and waits for its heartbeat. */
  private async startChroma(): Promise<ChromaServer> {
    const { dataDir } = this.config
    const chroma = ChromaServer.start({ dataDir, host: '127.0.0.1', port: this.chromaPort, onStderr: (chunk) => process.stderr.write(chunk) })
    this.chroma = chroma
    void this.status.write({ phase: 'starting', chromaPid: chroma.pid })
    log(`starting chroma (pid ${chroma.pid}) on 127.0.0.1:${this.chromaPort}`)
    await chroma.waitForHeartbeat(CHROMA_START_TIMEOUT_MS, this.stopRequested.signal)
    return chroma
  }

  private async assertCollectionExists(chroma: ChromaServer, collection: string): Promise<void> {
    const path = `/api/v2/tenants/default_tenant/databases/default_database/collections/${encodeURIComponent(collection)}`
    const res = await fetch(`${chroma.url}${path}`, { signal: AbortSignal.timeout(10_000) })
    await res.body?.cancel()
    if (res.status === 404) throw new Error(`collection ${JSON.stringify(collection)} is not in snapshot ${this.restored}`)
    if (!res.ok) throw new Error(`chroma answered ${res.status} when asked for collection ${JSON.stringify(collection)}`)
  }

  /** POST /_agent/save: a save while serving; a second request joins the save in flight. */
  private saveOnRequest(): Promise<SaveResult> {
    if (this.saving) return this.saving
    if (this.stopRequested.signal.aborted) throw new AgentHttpError(409, 'session_stopping', 'the session is stopping')
    if (this.status.current().phase !== 'ready') throw new AgentHttpError(409, 'session_not_ready', `the session is ${this.status.current().phase}, not ready`)
    if (parseSnapshotUri(this.restored).scheme !== 's3') throw new AgentHttpError(409, 'save_unsupported', `save-back needs an s3:// snapshot; ${this.restored} is not one`)
    return this.save().catch((err: Error) => {
      throw err instanceof SaveError ? new AgentHttpError(502, 'save_failed', err.message) : err
    })
  }

  private save(): Promise<SaveResult> {
    this.saving ??= this.quiesceAndSave().finally(() => {
      this.saving = null
    })
    return this.saving
  }

  /** Chroma down (the files are consistent only at rest), pack and upload, Chroma up again unless stopping. */
  private async quiesceAndSave(): Promise<SaveResult> {
    this.front.pause('the session is saving a snapshot version')
    await this.status.write({ phase: 'saving', bytes: 0 })
    log(`saving: stopping chroma, then uploading a new version of ${this.restored}`)
    await this.chroma?.stop(CHROMA_STOP_TIMEOUT_MS)
    let result: SaveResult | undefined
    let failure: Error | undefined
    try {
      result = await saveSnapshot(this.restored, this.config.dataDir, {
        s3: this.config.s3,
        signal: this.stopDeadline.signal,
        onProgress: (bytes) => void this.status.progress(bytes, undefined, 'saving'),
        sessionId: this.config.sessionId,
      })
      log(`saved ${result.snapshot} (${result.bytes} bytes, sha256 ${result.sha256}); ${result.series}/latest names it`)
      this.front.markClean()
      await this.status.write({ phase: 'saving', bytes: result.bytes }, { lastSave: result, saveError: undefined })
    } catch (err) {
      failure = err as Error
      log(`save failed: ${failure.message}`)
      await this.status.write({ phase: 'saving' }, { saveError: failure.message })
    }
    if (!this.stopRequested.signal.aborted) {
      await this.startChroma()
      this.front.serve(this.chromaPort)
      await this.status.write({ phase: 'ready', chromaPid: this.chroma?.pid })
    }
    if (failure) throw failure
    return result!
  }

  /** The requested stop: saved first when asked, Chroma down gracefully, data gone, exit 0. */
  private async shutDown(): Promise<number> {
    const wasServing = this.chroma !== undefined && !this.chroma.hasExited && this.status.current().phase === 'ready'
    this.front.pause('the session is stopping')
    await this.status.write({ phase: 'stopping', chromaPid: this.chroma?.pid })
    if (this.saving) {
      await this.saving.catch(() => {})
    } else if (this.assignment?.saveOnStop && wasServing && this.front.forwarded > 0) {
      // Only when Chroma was used since the restore or the last save: otherwise the data is already in a version.
      await this.save().catch(() => {}) // logged and in the status; a failed save leaves the previous version intact
    }
    await this.releaseResources()
    await this.status.write({ phase: 'exited' })
    log('stopped')
    return 0
  }

  private async fail(reason: string): Promise<number> {
    log(`failed: ${reason}`)
    this.front.pause(`the session failed: ${reason}`)
    await this.releaseResources()
    await this.status.write({ phase: 'failed', error: reason })
    return 1
  }

  private async releaseResources(): Promise<void> {
    this.deadMan.disarm()
    if (this.chroma) {
      const exit = await this.chroma.stop(CHROMA_STOP_TIMEOUT_MS)
      log(`chroma stopped (${describeExit(exit)})`)
    }
    await this.front.close()
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
  let secrets: SessionSecrets
  try {
    secrets = await loadSessionSecrets(config.secretSource, log)
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err
    log(`no session secrets: ${err.message}`)
    await new StatusFile(config.statusFile, () => {}).write({ phase: 'failed', error: `no session secrets: ${err.message}` })
    return 2
  }
  return new SessionAgent(config, secrets).run()
}

// Exit explicitly: idle keep-alive sockets (S3, fetch) must not hold the process open.
process.exit(await main())
