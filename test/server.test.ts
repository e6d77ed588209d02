import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { freeLoopbackPort } from '../src/free-port.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { stopAll } from './helpers/app.ts'
import { npmStartNodeArgs } from './helpers/npm-start.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// `npm start` as a user runs it: the real process on embedded defaults, a graceful
// SIGTERM that finishes in-flight work and leaves sessions running, and a second
// start that adopts them.

const root = await mkdtemp(join(tmpdir(), 'server-'))
await chmod(root, 0o755) // the embedded Postgres runs as the postgres user
const dataDir = join(root, 'data')
const fixture = await buildSnapshotFixture(join(root, 'snapshots'), { count: 30, dim: 8 })
const port = await freeLoopbackPort()
const base = `http://127.0.0.1:${port}`
const env = {
  ...process.env,
  DATA_DIR: dataDir,
  PORT: String(port),
  SNAPSHOT_ROOT: join(root, 'snapshots'),
  RECONCILE_INTERVAL_SECONDS: '0.2',
  SWEEP_INTERVAL_SECONDS: '1',
  LOG_LEVEL: 'info',
}
const sessions = new ProcessLauncher({ rootDir: join(dataDir, 'sessions') })
t.teardown(async () => {
  await stopAll(sessions)
  await rm(root, { recursive: true, force: true })
})

// What `npm start` runs once it has built the bundle (package.json scripts.start).
execFileSync(process.execPath, ['scripts/build.mjs'])
const SERVER_ARGS = npmStartNodeArgs()

function start(): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, SERVER_ARGS, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  return { child, output: () => out }
}

async function ready(server: { output: () => string }) {
  for (let i = 0; i < 600; i++) {
    const res = await request(`${base}/readyz`).catch(() => null)
    if (res) {
      await res.body.dump()
      if (res.statusCode === 200) return
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`server did not become ready:\n${server.output()}`)
}

const call = async (method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, headers: Record<string, string> = {}) => {
  const res = await request(`${base}${path}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, any> }
}

t.test('npm start on embedded defaults, graceful SIGTERM, restart adopts the sessions', async (t) => {
  const first = start()
  await ready(first)
  const lease = await call('POST', '/v1/leases', { snapshot: `file://${fixture.tarPath}`, collection: fixture.collection, waitSeconds: 40 })
  t.equal(lease.status, 201)
  t.equal(lease.body.session.status, 'READY', 'waitSeconds held the answer until READY')

  // An acquire still waiting for its session when SIGTERM arrives is answered, not cut off.
  const inFlight = call('POST', '/v1/leases', { snapshot: `file://${fixture.tarGzPath}`, mode: 'exclusive', waitSeconds: 40 })
  // SIGTERM once the acquire is in: its session's row exists and its answer is being held.
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    if ((await call('GET', '/v1/sessions')).body.sessions.length === 2) break
  }
  first.child.kill('SIGTERM')
  const answered = await inFlight
  t.equal(answered.status, 201, 'the in-flight request finished')
  t.equal(answered.body.session.status, 'READY')
  const [code] = await once(first.child, 'exit')
  t.equal(code, 0, 'clean exit', { output: first.output().slice(-3000) })
  t.match(first.output(), /sessions keep running for the next process/)
  t.equal((await sessions.listRunning()).length, 2, 'both sessions outlived the control plane')
  t.notOk(first.output().includes(lease.body.token), 'the lease token never reached the log')

  const second = start()
  await ready(second)
  const list = await call('GET', '/v1/sessions')
  t.same(list.body.sessions.map((s: { status: string }) => s.status), ['READY', 'READY'], 'adopted as they were')
  const heartbeat = await request(`${base}/api/v2/heartbeat`, { headers: { 'x-chroma-token': lease.body.token } })
  t.equal(heartbeat.statusCode, 200, "the first process's lease works on the second")
  await heartbeat.body.dump()
  second.child.kill('SIGTERM')
  t.equal((await once(second.child, 'exit'))[0], 0)
})

t.test('a bad setting stops the process at once with a clear message', async (t) => {
  const child = spawn(process.execPath, SERVER_ARGS, {
    env: { ...env, HOST: '0.0.0.0', API_KEYS: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  const [code] = await once(child, 'exit')
  t.equal(code, 1)
  t.match(err, /HOST=0\.0\.0\.0 is not loopback, but no API_KEYS are configured/)
})
