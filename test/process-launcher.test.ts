import { randomUUID } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { signLeaseToken } from '../container/agent/lease-token.ts'
import t, { type Test } from 'tap'
import type { LaunchTarget, ObservedCompute } from '../src/services/launchers/launcher.ts'
import { ProcessLauncher, type ProcessLauncherOptions } from '../src/services/launchers/process-launcher.ts'
import { AGENT_BUNDLE } from '../src/services/launchers/agent-bundle.ts'
import { buildSnapshotFixture, chromaAnswers, queryChroma } from './helpers/snapshot-fixture.ts'

// The process launcher with real agents and real Chroma servers: what a control
// plane, a restarted control plane, and a second replica on the same machine see.

const root = await mkdtemp(join(tmpdir(), 'process-launcher-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const snapshotRoot = join(root, 'snapshots')
const fixture = await buildSnapshotFixture(snapshotRoot)
const snapshot = `file://${fixture.tarGzPath}`
/** The agent requires it on every request to the session. */
const authToken = 'cls_test-session-token'
const controlToken = 'clc_test-control-token'
/** Signs the session's direct-access lease tokens (base64url). */
const leaseKey = 'process-launcher-test-lease-key'

let sessions = 0
/** A launcher on its own rootDir, and a fresh session id; every agent started there is killed at teardown. */
function setup(t: Test, options: Partial<ProcessLauncherOptions> = {}) {
  const rootDir = join(root, `sessions-${++sessions}`)
  const launcher = new ProcessLauncher({ rootDir, snapshotRoot, ...options })
  t.teardown(() => killAgents(rootDir))
  const sessionId = randomUUID()
  const target = (ref: string, generation = 1): LaunchTarget => ({ sessionId, generation, ref })
  return { rootDir, launcher, sessionId, target }
}

async function waitFor(
  launcher: ProcessLauncher,
  target: LaunchTarget,
  done: (o: ObservedCompute) => boolean,
  timeoutMs = 20_000,
): Promise<ObservedCompute> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const observed = (await launcher.describe([target])).get(target.ref)!
    if (done(observed) || Date.now() > deadline) return observed
    await sleep(50)
  }
}

/** The observation once the agent is ready (or gone). */
const waitForReady = async (launcher: ProcessLauncher, target: LaunchTarget) =>
  waitFor(launcher, target, (o) => o.state === 'stopped' || (o.state === 'running' && o.detail === 'ready'))

t.test('launch, describe, serve the snapshot, stop', async (t) => {
  const { launcher, sessionId, target, rootDir } = setup(t)
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot, collection: fixture.collection, authToken, controlToken, leaseKey })
  t.match(ref, /^\d+$/, 'the ref is the agent pid')
  const argv = readCmdline(Number(ref))
  t.equal(argv[1], AGENT_BUNDLE, 'the agent runs the bundle the session image runs (dist/agent/agent.mjs) on plain Node')
  t.notOk(argv.some((a) => a.includes('tsx')), 'with no TypeScript loader')

  const first = (await launcher.describe([target(ref)])).get(ref)
  t.ok(first?.state === 'starting' || first?.state === 'running', `observed right after launch: ${JSON.stringify(first)}`)

  const ready = await waitForReady(launcher, target(ref))
  if (ready.state !== 'running') return t.fail(`not running: ${JSON.stringify(ready)}`)
  t.equal(ready.host, '127.0.0.1')
  const session = { ...ready, token: authToken }
  // The secrets went over in a 0600 file the agent deleted once read: not in argv, not in the environment.
  const shown = (await Promise.all(['cmdline', 'environ'].map((f) => readFile(`/proc/${ref}/${f}`, 'utf8')))).join('\n')
  for (const secret of [authToken, controlToken, leaseKey]) t.notOk(shown.includes(secret), 'no secret in the agent\'s argv or environment')
  t.match(shown, /SESSION_SECRET_FILE=/)
  t.notOk(existsSync(join(rootDir, `${sessionId}-g1`, 'secret.json')), 'the agent deleted its secret file')
  const leaseToken = signLeaseToken(Buffer.from(leaseKey, 'base64url'), randomUUID(), Date.now() + 60_000)
  t.ok(await chromaAnswers({ ...ready, token: leaseToken }), "a lease's token signed with the session's lease key opens it")
  t.notOk(await chromaAnswers({ ...ready, token: signLeaseToken(Buffer.from('another-sessions-lease-key', 'base64url'), randomUUID(), Date.now() + 60_000) }), "another session's lease token does not")
  t.notOk(await chromaAnswers(ready), 'the session refuses a request without its token')
  t.ok(await chromaAnswers(session), 'Chroma heartbeat answers with the token')
  const [hit] = await queryChroma(session, fixture.collection, fixture.vector(3))
  t.equal(hit?.id, 'r-3', 'the fixture collection is queryable')

  await launcher.stop(target(ref), 'test is done')
  const stopped = await waitFor(launcher, target(ref), (o) => o.state === 'stopped')
  t.same(stopped, { state: 'stopped', reason: 'the session agent exited: stopped by SIGTERM', clean: true })
  t.notOk(await chromaAnswers(session), 'Chroma is down')
  const dir = join(rootDir, `${sessionId}-g1`)
  t.notOk(existsSync(join(dir, 'data')), 'data directory removed')
  t.match(await readFile(join(dir, 'agent.log'), 'utf8'), /launcher: stop requested: test is done/)
  await launcher.stop(target(ref), 'again')
  t.pass('stopping a stopped agent is harmless')
})

t.test('concurrent launches of one attempt start one agent; a restarted control plane sees it', async (t) => {
  const { launcher, sessionId, target, rootDir } = setup(t)
  const replica = new ProcessLauncher({ rootDir, snapshotRoot })
  const spec = { sessionId, generation: 1, snapshot, collection: null, authToken, controlToken, leaseKey }
  const refs = await Promise.all([launcher.launch(spec), replica.launch(spec), launcher.launch(spec)])
  t.same(new Set(refs.map((r) => r.ref)).size, 1, 'every caller gets the same ref')
  t.equal(agentPids(sessionId).length, 1, 'one agent process')
  const ref = refs[0]!.ref

  const restarted = new ProcessLauncher({ rootDir, snapshotRoot })
  t.same(await restarted.listRunning(), [{ ref, sessionId, generation: 1 }], 'listRunning finds it')
  const ready = await waitForReady(restarted, target(ref))
  t.equal(ready.state, 'running', 'describe sees it running')
  t.same(await restarted.launch(spec), { ref }, 'launching the same attempt again returns it')

  await rm(join(rootDir, `${sessionId}-g1`, 'pid'))
  t.same(await restarted.listRunning(), [{ ref, sessionId, generation: 1 }], 'found without its pid file (a launcher crashed before writing it)')

  const { ref: ref2 } = await restarted.launch({ ...spec, generation: 2 })
  t.not(ref2, ref, 'a new generation is a new launch')
  t.same((await restarted.listRunning()).map((r) => r.generation).sort(), [1, 2])
})

t.test('a killed agent is reported stopped, and its Chroma stops too', async (t) => {
  const { launcher, sessionId, target, rootDir } = setup(t)
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot, collection: null, authToken, controlToken, leaseKey })
  const ready = await waitForReady(launcher, target(ref))
  if (ready.state !== 'running') return t.fail(`not running: ${JSON.stringify(ready)}`)

  process.kill(Number(ref), 'SIGKILL') // the agent alone, not its group
  const stopped = await waitFor(launcher, target(ref), (o) => o.state === 'stopped')
  t.same(stopped, { state: 'stopped', reason: 'agent process is gone (last phase: ready)' })
  t.same(await launcher.listRunning(), [])
  t.notOk(existsSync(join(rootDir, `${sessionId}-g1`, 'data')), 'describe cleared the dead agent\'s data')
  const deadline = Date.now() + 5_000
  while ((await chromaAnswers({ ...ready, token: authToken })) && Date.now() < deadline) await sleep(100)
  t.notOk(await chromaAnswers({ ...ready, token: authToken }), 'orphaned Chroma stopped itself')
})

t.test('a failed restore is reported with its reason', async (t) => {
  const { launcher, sessionId, target } = setup(t)
  const corrupt = join(snapshotRoot, 'corrupt.tar')
  await writeFile(corrupt, 'not a tar archive'.repeat(64))
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot: `file://${corrupt}`, collection: null, authToken, controlToken, leaseKey })
  const stopped = await waitFor(launcher, target(ref), (o) => o.state === 'stopped')
  t.match(stopped, { state: 'stopped', reason: `snapshot file://${corrupt} is not a valid tar archive: ` })
})

t.test('stop escalates to SIGKILL after the grace period', async (t) => {
  const { launcher, sessionId, target } = setup(t, { stopGraceMs: 300 })
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot, collection: null, authToken, controlToken, leaseKey })
  await waitForReady(launcher, target(ref))
  // A stopped process cannot act on SIGTERM, but SIGKILL takes it regardless.
  process.kill(-Number(ref), 'SIGSTOP')
  await launcher.stop(target(ref), 'first request')
  await sleep(100)
  t.equal((await launcher.describe([target(ref)])).get(ref)?.state, 'running', 'SIGTERM is pending')
  await sleep(300)
  await launcher.stop(target(ref), 'still there')
  const stopped = await waitFor(launcher, target(ref), (o) => o.state === 'stopped')
  t.equal(stopped.state, 'stopped', 'SIGKILL after the grace period')
  t.equal(agentPids(sessionId).length, 0)
})

t.test('a pid file naming an unrelated live process is not an agent', async (t) => {
  const { launcher, rootDir, target } = setup(t)
  const dir = join(rootDir, 'imposter-g1')
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'pid'), `${process.pid}\n`)
  await writeFile(join(dir, 'port'), '1\n')
  const imposter = { ...target(String(process.pid)), sessionId: 'imposter' }
  t.same(await launcher.listRunning(), [], 'not listed')
  t.same((await launcher.describe([imposter])).get(imposter.ref), { state: 'stopped', reason: 'agent process is gone' })
  await launcher.stop(imposter, 'must not signal the test runner')
  t.pass('this process was not signalled')
})

/** Pids of live agents for a session, found by command line like the launcher does. */
function agentPids(sessionId: string): number[] {
  return pidsWhoseCmdline((args) => args.includes('--session') && args.includes(sessionId) && args.some(isAgentProgram))
}

/** The agent's bundle, or its source (as launchers before the bundle ran it). */
const isAgentProgram = (arg: string) => arg.endsWith('dist/agent/agent.mjs') || arg.endsWith('container/agent/main.ts')

function pidsWhoseCmdline(match: (args: string[]) => boolean): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((pid) => match(readCmdline(pid)))
}

function readCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  } catch {
    return [] // exited meanwhile
  }
}

/**
 * Teardown: SIGKILL the process group of every agent running in a launch directory
 * under `rootDir`, found without the code under test (and without pid files).
 */
function killAgents(rootDir: string): void {
  for (const pid of pidsWhoseCmdline((args) => args.some(isAgentProgram))) {
    const cwd = readlinkOrNull(`/proc/${pid}/cwd`)
    if (cwd?.startsWith(`${rootDir}/`)) process.kill(-pid, 'SIGKILL')
  }
}

function readlinkOrNull(path: string): string | null {
  try {
    return readlinkSync(path)
  } catch {
    return null
  }
}

t.test('an agent stopping on a signal the launcher did not send is observed as stopping, then as a clean exit', async (t) => {
  const { startS3Fake, startStallingS3 } = await import('./helpers/s3-fake.ts')
  const s3 = await startS3Fake(join(root, 's3'))
  t.teardown(() => s3.close())
  await s3.putFile('receipts/v1.tar.gz', fixture.tarGzPath)
  // Uploads of a new version never finish: the save on the way out keeps the agent stopping until its stop timeout.
  const stall = await startStallingS3(s3.endpoint, (method, path) => method !== 'GET' && path.includes('/versions/'))
  t.teardown(() => stall.close())
  const { launcher, sessionId, target } = setup(t, { s3Endpoint: stall.endpoint, env: { ...s3.env, STOP_TIMEOUT_SECONDS: '3' } })
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot: `s3://${s3.bucket}/receipts/v1.tar.gz`, collection: null, authToken, controlToken, leaseKey, saveOnStop: true })
  const ready = await waitForReady(launcher, target(ref))
  if (ready.state !== 'running') return t.fail(`not running: ${JSON.stringify(ready)}`)
  t.ok(await chromaAnswers({ ...ready, token: authToken }), 'used, so there is something to save')

  process.kill(Number(ref), 'SIGTERM') // e.g. ECS scale-in or a Spot interruption, not launcher.stop()
  const stopping = await waitFor(launcher, target(ref), (o) => o.state !== 'running' || o.stopping === true)
  t.match(stopping, { state: 'running', stopping: true }, 'seen stopping, so the control plane can drain it')
  const gone = await waitFor(launcher, target(ref), (o) => o.state === 'stopped')
  t.match(gone, { state: 'stopped', clean: true, reason: 'the session agent exited: stopped by SIGTERM' }, 'a clean exit within its stop timeout')
  t.notOk((gone as { saved?: unknown }).saved, 'the save that could not finish saved nothing')
})
