import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { randomUUID } from 'node:crypto'
import { appendFile, link, mkdir, open, readdir, readFile, readlink, realpath, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import { freeLoopbackPort } from '../../free-port.ts'
import { projectPath } from '../../paths.ts'
import { AGENT_BUNDLE, agentBundle } from './agent-bundle.ts'
import type { AgentStatus } from '../../../container/agent/status.ts'
import type { SessionSecretDocument } from '../../../container/agent/lease-token.ts'
import type { LaunchSpec, LaunchTarget, Launcher, ObservedCompute, PreflightCheck, RunningCompute } from './launcher.ts'

/**
 * Runs each session's agent as a local process, for development and tests: the same
 * program as in the Fargate image, its esbuild bundle of container/agent/main.ts on
 * plain Node (dist/agent/agent.mjs, built on demand: see agent-bundle.ts).
 *
 * Everything it knows lives on disk, one directory per launch attempt, so that a
 * restarted control plane (or a second one on the same machine) sees the same state:
 *
 *   <rootDir>/<sessionId>-g<generation>/
 *     claim            created exclusively by the launch() that won the race
 *     port             the loopback port Chroma listens on
 *     pid              the agent's pid = the launch ref (written right after the spawn)
 *     status.json      the agent's STATUS_FILE
 *     secret.json      the session's secrets (0600), until the agent has read and deleted it
 *     agent.log        the agent's stdout and stderr, Chroma's output included
 *     data/            the restored snapshot (the agent deletes it when it exits)
 *     stop-requested   when stop() was first called, and why
 *
 * Agents are detached process-group leaders, so they outlive the control plane, and
 * run in their launch directory. A pid counts as the agent only while
 * /proc/<pid>/cmdline names the session and generation (pids get reused); listRunning()
 * finds agents through /proc too. This makes the launcher Linux-only.
 *
 * Clean-up: the agent deletes data/ itself on any exit it survives. When describe()
 * or stop() find an agent dead (SIGKILL, crash), they delete data/ for it; the small
 * files stay for post-mortems, and removing old launch directories is left to the
 * operator.
 */
export interface ProcessLauncherOptions {
  /** Where launch directories go, e.g. ./.data/sessions. */
  rootDir: string
  /** Passed to agents as SNAPSHOT_ROOT: file:// snapshots must lie under it. */
  snapshotRoot?: string
  /** Passed to agents as S3_ENDPOINT. */
  s3Endpoint?: string
  /** Extra environment for agents, e.g. AWS credentials and region. */
  env?: Record<string, string>
  /** How long after the first stop request a later stop() escalates to SIGKILL. */
  stopGraceMs?: number
  logger?: Logger
}

/** The agent's source, which older launchers ran under the tsx loader (their agents are still recognised). */
const AGENT_MAIN = projectPath('container', 'agent', 'main.ts')
/** Agents on this machine only ever listen on loopback. */
const AGENT_HOST = '127.0.0.1'
/** Variables of the control plane's own environment that agents inherit; nothing else (no DATABASE_URL, no API keys). */
const INHERITED_ENV = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ']
/** The session's secrets for the agent (SESSION_SECRET_FILE): read once and deleted by it. */
const SECRET_FILE = 'secret.json'
/** How long a launch() that lost the claim waits for the winner's pid file before looking for the agent itself. */
const CLAIM_WAIT_MS = 10_000

export class ProcessLauncher implements Launcher {
  readonly kind = 'process' as const
  private readonly rootDir: string
  private readonly stopGraceMs: number

  constructor(private readonly options: ProcessLauncherOptions) {
    this.rootDir = resolve(options.rootDir)
    this.stopGraceMs = options.stopGraceMs ?? 15_000
  }

  async launch(spec: LaunchSpec): Promise<{ ref: string }> {
    const dir = this.launchDir(spec.sessionId, spec.generation)
    await mkdir(dir, { recursive: true })
    if (!(await publishExclusive(join(dir, 'claim'), `${process.pid}\n`))) {
      return { ref: String(await this.waitForWinner(dir, spec.sessionId, spec.generation)) }
    }
    const port = await freeLoopbackPort(AGENT_HOST)
    let pid: number | undefined
    try {
      await writeFile(join(dir, 'port'), `${port}\n`)
      await writeSecretFile(join(dir, SECRET_FILE), spec)
      pid = await this.spawnAgent(spec, dir, port)
      await writeAtomically(join(dir, 'pid'), `${pid}\n`)
    } catch (err) {
      // Undo, so that a retry of this launch attempt starts afresh and nothing runs unrecorded.
      if (pid !== undefined) signalGroup(pid, 'SIGKILL')
      await rm(join(dir, 'claim'), { force: true })
      await rm(join(dir, SECRET_FILE), { force: true })
      throw err
    }
    this.options.logger?.info({ sessionId: spec.sessionId, generation: spec.generation, pid, port, dir }, 'session agent launched')
    return { ref: String(pid) }
  }

  async preflight(): Promise<PreflightCheck[]> {
    // Builds the bundle now if it is missing or stale, so the first launch does not wait for it.
    try {
      const bundle = await agentBundle()
      return [{ name: 'session agent', ok: true, detail: `sessions run as local processes of ${bundle} (the session image's bundle of ${AGENT_MAIN})` }]
    } catch (err) {
      return [{ name: 'session agent', ok: false, detail: (err as Error).message }]
    }
  }

  async describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>> {
    const observed = await Promise.all(targets.map(async (t) => [t.ref, await this.observe(t)] as const))
    return new Map(observed)
  }

  async stop(target: LaunchTarget, reason: string): Promise<void> {
    const dir = this.launchDir(target.sessionId, target.generation)
    const pid = parsePid(target.ref)
    if (pid === null || !(await isAgentProcess(pid, target.sessionId, target.generation))) {
      await removeData(dir)
      return
    }
    const firstRequestAt = await recordStopRequest(dir, reason)
    const signal = Date.now() - firstRequestAt >= this.stopGraceMs ? 'SIGKILL' : 'SIGTERM'
    // The whole group: the agent and its Chroma child. The agent stops Chroma
    // gracefully on SIGTERM (Chroma itself ignores SIGTERM); SIGKILL takes both.
    signalGroup(pid, signal)
    this.options.logger?.info({ sessionId: target.sessionId, generation: target.generation, pid, signal, reason }, 'session agent signalled')
  }

  /**
   * Scans /proc rather than the pid files: an agent whose launcher crashed between
   * spawning it and writing its pid file must still be found and stopped. An agent is
   * ours when its working directory is its launch directory under rootDir.
   */
  async listRunning(): Promise<RunningCompute[]> {
    // /proc shows the working directory with symlinks resolved.
    const root = await realpath(this.rootDir).catch(() => null)
    if (root === null) return [] // nothing launched here yet
    const running: RunningCompute[] = []
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const identity = agentIdentity(await readCmdline(Number(entry)))
      if (!identity) continue
      const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => null)
      if (cwd === join(root, launchDirName(identity.sessionId, identity.generation))) {
        running.push({ ref: entry, ...identity })
      }
    }
    return running
  }

  private launchDir(sessionId: string, generation: number): string {
    // The id becomes a path segment: refuse anything that could leave rootDir.
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(sessionId)) {
      throw new Error(`session id ${JSON.stringify(sessionId)} cannot name a launch directory (letters, digits, - and _ only)`)
    }
    if (!Number.isSafeInteger(generation) || generation < 0) throw new Error(`invalid generation ${generation}`)
    return join(this.rootDir, launchDirName(sessionId, generation))
  }

  /** The winner of the claim publishes the pid within moments; if it crashed, the agent may still be found running. */
  private async waitForWinner(dir: string, sessionId: string, generation: number): Promise<number> {
    const deadline = Date.now() + CLAIM_WAIT_MS
    while (Date.now() < deadline) {
      const pid = await readPid(dir)
      if (pid !== null) return pid
      await sleep(50)
    }
    const orphan = (await this.listRunning()).find((r) => r.sessionId === sessionId && r.generation === generation)
    if (orphan) {
      await writeAtomically(join(dir, 'pid'), `${orphan.ref}\n`)
      return Number(orphan.ref)
    }
    throw new Error(`launch ${dir} was claimed by another launcher, which started no agent within ${CLAIM_WAIT_MS} ms (did it crash mid-launch?)`)
  }

  private async spawnAgent(spec: LaunchSpec, dir: string, port: number): Promise<number> {
    const log = await open(join(dir, 'agent.log'), 'a')
    try {
      // The image's program (its esbuild bundle, on plain Node): no TypeScript loader to start or to hold in memory.
      // The session and generation in argv are what /proc/<pid>/cmdline is checked against.
      const args = [await agentBundle(), '--session', spec.sessionId, '--generation', String(spec.generation)]
      const child = spawn(process.execPath, args, {
        cwd: dir,
        // Its own process group, and no tie to our lifetime: sessions outlive a control plane restart.
        detached: true,
        stdio: ['ignore', log.fd, log.fd],
        env: this.agentEnv(spec, dir, port),
      })
      if (child.pid === undefined) {
        const [err] = (await once(child, 'error')) as [Error]
        throw new Error(`cannot start the session agent: ${err.message}`)
      }
      child.unref()
      return child.pid
    } finally {
      await log.close()
    }
  }

  private agentEnv(spec: LaunchSpec, dir: string, port: number): Record<string, string> {
    const inherited = Object.fromEntries(INHERITED_ENV.flatMap((name) => (process.env[name] ? [[name, process.env[name]]] : [])))
    return {
      ...inherited,
      // The agent keeps a stop (saving included) inside the grace after which stop() escalates to SIGKILL.
      STOP_TIMEOUT_SECONDS: String(Math.max(1, Math.floor(this.stopGraceMs / 1000))),
      ...this.options.env,
      SESSION_ID: spec.sessionId,
      // The launch attempt this agent belongs to, as on Fargate (its argv and launch directory name it too).
      SESSION_GENERATION: String(spec.generation),
      ...(spec.warm ? { WARM: '1' } : { SNAPSHOT_URI: spec.snapshot }),
      ...(spec.collection !== null ? { COLLECTION: spec.collection } : {}),
      CHROMA_DATA_DIR: join(dir, 'data'),
      CHROMA_HOST: AGENT_HOST,
      CHROMA_PORT: String(port),
      // The secrets themselves are in the file, which the agent deletes once read: neither
      // argv nor the environment (/proc/<pid>/environ, ps e) shows them.
      SESSION_SECRET_FILE: join(dir, SECRET_FILE),
      ...(spec.deadManSeconds !== undefined ? { DEAD_MAN_SECONDS: String(spec.deadManSeconds) } : {}),
      ...(spec.saveOnStop ? { SAVE_ON_STOP: '1' } : {}),
      STATUS_FILE: join(dir, 'status.json'),
      ...(this.options.snapshotRoot ? { SNAPSHOT_ROOT: this.options.snapshotRoot } : {}),
      ...(this.options.s3Endpoint ? { S3_ENDPOINT: this.options.s3Endpoint } : {}),
    }
  }

  private async observe(target: LaunchTarget): Promise<ObservedCompute> {
    const dir = this.launchDir(target.sessionId, target.generation)
    const pid = parsePid(target.ref)
    const status = await readStatus(dir)
    if (pid !== null && (await isAgentProcess(pid, target.sessionId, target.generation))) {
      // A failed agent is on its way out: fail the start now. An exiting one counts as stopped
      // only once its process is gone (STOPPED means confirmed gone).
      if (status?.phase === 'failed') return stoppedObservation(status)
      if (status?.phase === 'exited') return { state: 'starting', detail: 'exiting' }
      const port = await readPort(dir)
      if (port === null) return { state: 'stopped', reason: `launch directory ${dir} has no port file` }
      if (!status || status.phase === 'restoring') {
        return { state: 'starting', detail: restoringDetail(status), host: AGENT_HOST, port, ...(status ? { progress: progressOf(status) } : {}) }
      }
      // "stopping" without our stop request: someone else signalled it (the local stand-in for scale-in or Spot).
      const stopping = (status.phase === 'stopping' || (status.phase === 'saving' && status.stopReason !== undefined)) && !(await stopWasRequested(dir))
      return {
        state: 'running',
        host: AGENT_HOST,
        port,
        detail: status.phase,
        ...(status.phase === 'saving' ? { progress: progressOf(status) } : {}),
        ...(stopping ? { stopping } : {}),
      }
    }
    // Gone. Read its status again: it may have written its end (exited, with the
    // reason) between the read above and the process check, and nothing writes it now.
    const final = await readStatus(dir)
    await removeData(dir)
    return stoppedObservation(final)
  }
}

function launchDirName(sessionId: string, generation: number): string {
  return `${sessionId}-g${generation}`
}

/**
 * True while `pid` is the agent of this launch attempt. /proc/<pid>/cmdline cannot be
 * read for a dead pid and is empty for a zombie, and a reused pid names something else.
 */
async function isAgentProcess(pid: number, sessionId: string, generation: number): Promise<boolean> {
  const identity = agentIdentity(await readCmdline(pid))
  return identity?.sessionId === sessionId && identity.generation === generation
}

/** The launch attempt an agent's argv names, or null when the argv is not an agent's. */
function agentIdentity(args: string[]): { sessionId: string; generation: number } | null {
  const valueOf = (flag: string) => {
    const i = args.indexOf(flag)
    return i < 0 ? undefined : args[i + 1]
  }
  const sessionId = valueOf('--session')
  const generation = valueOf('--generation')
  const program = args.some((a) => a === AGENT_BUNDLE || a.endsWith('/container/agent/main.ts'))
  if (!program || !sessionId || !generation || !/^\d+$/.test(generation)) {
    return null
  }
  return { sessionId, generation: Number(generation) }
}

async function readCmdline(pid: number): Promise<string[]> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  return cmdline.split('\0')
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err // gone meanwhile: nothing to stop
  }
}

/**
 * Records the first stop request (time and reason) and returns its time in ms. The file
 * appears whole or not at all (see publishExclusive); one whose content cannot be read
 * anyway (written by an older launcher killed mid-write) counts as a request made now,
 * and is replaced by one that says so, so that later calls escalate after the grace.
 */
async function recordStopRequest(dir: string, reason: string): Promise<number> {
  const path = join(dir, 'stop-requested')
  const now = Date.now()
  const request = JSON.stringify({ at: new Date(now).toISOString(), reason }) + '\n'
  if (await publishExclusive(path, request)) {
    await appendFile(join(dir, 'agent.log'), `${new Date(now).toISOString()} launcher: stop requested: ${reason}\n`)
    return now
  }
  const at = await readFile(path, 'utf8').then(requestedAt, () => null)
  if (at !== null) return at
  await writeAtomically(path, request)
  return now
}

/** The agent's secrets document, readable by this user only (created 0600, never widened). */
async function writeSecretFile(path: string, spec: LaunchSpec): Promise<void> {
  await rm(path, { force: true })
  const document: SessionSecretDocument = { sessionToken: spec.authToken, controlToken: spec.controlToken, leaseKey: spec.leaseKey }
  const file = await open(path, 'wx', 0o600)
  try {
    await file.writeFile(JSON.stringify(document))
  } finally {
    await file.close()
  }
}

/** The time of a stop-requested file's content, or null when it is not readable as one. */
function requestedAt(content: string): number | null {
  try {
    const at = Date.parse((JSON.parse(content) as { at?: unknown }).at as string)
    return Number.isFinite(at) ? at : null
  } catch {
    return null
  }
}

/**
 * Creates `path` with `content` unless it exists, atomically: the content goes to a
 * temporary file first, which is then hard-linked to `path` (link fails if it exists).
 * A process killed at any point leaves either no file or the whole file, never an
 * empty one. True when this call created it.
 */
async function publishExclusive(path: string, content: string): Promise<boolean> {
  const temp = `${path}.${process.pid}.${randomUUID()}.tmp`
  await writeFile(temp, content)
  try {
    await link(temp, path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    await rm(temp, { force: true })
  }
}

/** Readers never see a partly written file (a temporary file of this call's own, then rename). */
async function writeAtomically(path: string, content: string): Promise<void> {
  const temp = `${path}.${process.pid}.${randomUUID()}.tmp`
  await writeFile(temp, content)
  await rename(temp, path)
}

async function readPid(dir: string): Promise<number | null> {
  return parsePid(await readFile(join(dir, 'pid'), 'utf8').catch(() => ''))
}

async function readPort(dir: string): Promise<number | null> {
  const port = Number((await readFile(join(dir, 'port'), 'utf8').catch(() => '')).trim())
  return Number.isInteger(port) && port > 0 ? port : null
}

function parsePid(text: string): number | null {
  const pid = Number(text.trim())
  return Number.isSafeInteger(pid) && pid > 1 ? pid : null
}

async function readStatus(dir: string): Promise<AgentStatus | null> {
  try {
    return JSON.parse(await readFile(join(dir, 'status.json'), 'utf8')) as AgentStatus
  } catch {
    return null // not written yet
  }
}

function restoringDetail(status: AgentStatus | null): string {
  if (!status) return 'agent starting'
  return status.percent === undefined ? `restoring ${status.bytes ?? 0} bytes` : `restoring ${status.percent}%`
}

function progressOf(status: AgentStatus) {
  return { phase: status.phase, bytes: status.bytes, totalBytes: status.totalBytes, percent: status.percent }
}

function stoppedObservation(status: AgentStatus | null): ObservedCompute {
  return {
    state: 'stopped',
    reason: goneReason(status),
    ...(status?.phase === 'exited' ? { clean: true } : {}),
    ...(status?.lastSave ? { saved: status.lastSave } : {}),
  }
}

async function stopWasRequested(dir: string): Promise<boolean> {
  return readFile(join(dir, 'stop-requested'), 'utf8').then(() => true, () => false)
}

function goneReason(status: AgentStatus | null): string {
  if (status?.phase === 'failed') return status.error ?? 'the session agent failed'
  if (status?.phase === 'exited') return status.stopReason ? `the session agent exited: ${status.stopReason}` : 'the session agent exited after a stop request'
  return `agent process is gone${status ? ` (last phase: ${status.phase})` : ''}`
}

async function removeData(dir: string): Promise<void> {
  await rm(join(dir, 'data'), { recursive: true, force: true })
}
