import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { freeLoopbackPort } from '../src/free-port.ts'
import { buildTestApp } from './helpers/app.ts'
import { buildSnapshotFixture, countChroma } from './helpers/snapshot-fixture.ts'

// Docker cannot build here, so this runs the commands the two Dockerfiles run, on this
// machine's files, with /app mapped to a temporary directory: the agent bundle is built
// by the same script, the binding is stripped by the same command, the agent starts by
// the image's ENTRYPOINT with the image's ENV, and its HEALTHCHECK is the one judged.

const repo = fileURLToPath(new URL('..', import.meta.url))
const root = await mkdtemp(join(tmpdir(), 'image-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const app = join(root, 'app')

interface Dockerfile {
  runs: string[]
  env: Record<string, string>
  entrypoint: string[]
  cmd: string[]
  healthcheck: string[]
  user: string
}

/** The instructions of the final stage that matter here, and every RUN of every stage. */
function parseDockerfile(text: string): Dockerfile {
  const lines = text.replace(/\s*\\\n\s*/g, " ").split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))
  const result: Dockerfile = { runs: [], env: {}, entrypoint: [], cmd: [], healthcheck: [], user: '' }
  for (const line of lines) {
    const [instruction, ...rest] = line.split(' ')
    const args = rest.join(' ')
    if (instruction === 'FROM') result.env = {}
    if (instruction === 'RUN') result.runs.push(args)
    if (instruction === 'ENV') for (const m of args.matchAll(/(\w+)=(\S+)/g)) result.env[m[1]!] = m[2]!
    if (instruction === 'ENTRYPOINT') result.entrypoint = JSON.parse(args) as string[]
    if (instruction === 'CMD') result.cmd = JSON.parse(args) as string[]
    if (instruction === 'USER') result.user = args
    if (instruction === 'HEALTHCHECK') result.healthcheck = JSON.parse(args.slice(args.indexOf('CMD ') + 4)) as string[]
  }
  return result
}

const atApp = (args: string[]) => args.map((a) => a.replaceAll('/app/', `${app}/`).replace(/^\/app$/, app))

/** Runs a command to its end without blocking this process (the control plane under test answers from it). */
async function run(command: string, args: string[], env: Record<string, string> = {}, cwd = repo) {
  const child = spawn(command, args, { cwd, env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (c: Buffer) => (stderr += c))
  const [status] = (await once(child, 'close')) as [number | null]
  return { status, stderr }
}

t.test('the session image', async (t) => {
  const image = parseDockerfile(await readFile(join(repo, 'container/Dockerfile'), 'utf8'))
  t.equal(image.user, 'node', 'runs as a non-root user')

  const buildRun = image.runs.find((r) => r.startsWith('node scripts/build-agent.mjs'))!
  t.equal(buildRun, 'node scripts/build-agent.mjs /app', 'the image bundles the agent with scripts/build-agent.mjs')
  const built = await run('node', atApp(buildRun.split(' ').slice(1)))
  t.equal(built.status, 0, built.stderr)

  // The binding stage: the pinned version, stripped by the image's own command.
  const pkg = JSON.parse(await readFile(join(app, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  t.same(pkg.dependencies, { 'chromadb-js-bindings-linux-x64-gnu': '1.0.5' }, 'only the pinned Chroma binding is installed')
  const stripRun = image.runs.find((r) => r.includes('strip --strip-unneeded'))!
  const bindingDir = join(app, 'node_modules/chromadb-js-bindings-linux-x64-gnu')
  const installed = join(repo, 'node_modules/chromadb-js-bindings-linux-x64-gnu')
  await mkdir(bindingDir, { recursive: true })
  await copyFile(join(installed, 'package.json'), join(bindingDir, 'package.json'))
  const strip = stripRun.slice(stripRun.indexOf('strip --strip-unneeded')).split(' ')
  if ((await run('which', ['strip'])).status === 0) {
    await copyFile(join(installed, 'chromadb-js-bindings.linux-x64-gnu.node'), join(bindingDir, 'chromadb-js-bindings.linux-x64-gnu.node'))
    const stripped = await run('sh', ['-c', strip.join(' ')], {}, app)
    t.equal(stripped.status, 0, stripped.stderr)
  } else {
    await symlink(join(installed, 'chromadb-js-bindings.linux-x64-gnu.node'), join(bindingDir, 'chromadb-js-bindings.linux-x64-gnu.node'))
    t.comment('no strip on this machine: the unstripped binding is used')
  }

  const fixture = await buildSnapshotFixture(join(root, 'fixture'), { count: 30, dim: 8 })
  const port = await freeLoopbackPort()
  const env = {
    ...image.env,
    // The image's fixed ports, moved to free ones: this machine runs other sessions.
    CHROMA_PORT: String(port),
    CHROMA_INTERNAL_PORT: String(await freeLoopbackPort()),
    CHROMA_DATA_DIR: join(root, 'data'),
    SESSION_ID: 'image-test',
    SESSION_TOKEN: 'cls_image-test-session-token',
    CONTROL_TOKEN: 'clc_image-test-control-token',
    SNAPSHOT_URI: `file://${fixture.tarGzPath}`,
    HOME: root,
  }
  t.equal(image.env.CHROMA_HOST, '0.0.0.0', 'the session listens on every interface (the task ENI)')
  const [command, ...args] = atApp(image.entrypoint)
  const agent = spawn(command!, args, { env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let output = ''
  agent.stdout.on('data', (c: Buffer) => (output += c))
  agent.stderr.on('data', (c: Buffer) => (output += c))
  const exited = once(agent, 'exit').then(([code]) => code as number | null)
  t.teardown(async () => {
    if (agent.exitCode === null && agent.signalCode === null) process.kill(-agent.pid!, 'SIGKILL')
    await exited
  })

  const [hc, ...hcArgs] = atApp(image.healthcheck)
  const healthcheck = async (extra: Record<string, string> = {}) => (await run(hc!, hcArgs, { ...env, ...extra })).status
  const deadline = Date.now() + 60_000
  while ((await healthcheck()) !== 0 && Date.now() < deadline && agent.exitCode === null) await sleep(200)
  t.equal(await healthcheck(), 0, `HEALTHCHECK passes once the session serves\n${output}`)
  t.equal(await countChroma({ host: '127.0.0.1', port, token: env.SESSION_TOKEN }, fixture.collection), 30, 'the bundled agent serves the snapshot')
  t.equal(await healthcheck({ SESSION_TOKEN: 'cls_wrong-token-wrong-token' }), 1, 'a wrong token fails the HEALTHCHECK')

  process.kill(agent.pid!, 'SIGTERM')
  t.equal(await exited, 0, 'stops cleanly on SIGTERM')
  t.equal(await healthcheck(), 1, 'and the HEALTHCHECK fails once it is gone')
})

t.test('the control-plane image', async (t) => {
  const image = parseDockerfile(await readFile(join(repo, 'Dockerfile'), 'utf8'))
  t.equal(image.user, 'node', 'runs as a non-root user')
  const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  t.same(image.runs[0], 'npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund')
  t.equal(image.runs[1], 'node scripts/build.mjs', 'bundles at build time')
  t.equal(`${image.runs[1]} && ${image.cmd.join(' ')}`, pkg.scripts.start, 'build step + CMD is `npm start` (test/server.test.ts runs it end to end)')

  const ctx = await buildTestApp(t, { listen: true })
  const [hc, ...hcArgs] = image.healthcheck
  t.equal((await run(hc!, hcArgs, { PORT: new URL(ctx.url).port })).status, 0, 'HEALTHCHECK passes against a live control plane')
  t.equal((await run(hc!, hcArgs, { PORT: String(await freeLoopbackPort()) })).status, 1, 'and fails when nothing answers')
})
