import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { freeLoopbackPort } from '../src/free-port.ts'
import { buildLocally, cannotRunHere, imageConfig, parseDockerfile, runLines } from './helpers/dockerfile.ts'
import { buildSnapshotFixture, countChroma } from './helpers/snapshot-fixture.ts'

// Docker cannot build here, so this builds the session image's stages from
// container/Dockerfile as Docker would, each stage in a temporary directory standing for
// its root: its own COPY lines from this checkout, its own RUN lines (npm ci, the agent
// bundle, the binding's npm install and strip), then the runtime stage's ENTRYPOINT
// with its ENV, and its HEALTHCHECK judged. The control-plane image is
// test/control-plane-image.test.ts (a file of its own, so the two npm installs run in
// parallel).

const repo = fileURLToPath(new URL('..', import.meta.url))
const root = await mkdtemp(join(tmpdir(), 'image-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))

/** What apt-get installs in the image, and the program of it the image uses: present on this machine instead. */
const APT_PROGRAMS: Record<string, string> = { binutils: 'strip', zstd: 'zstd' }

const which = async (program: string) => (await once(spawn('sh', ['-c', `command -v ${program}`], { stdio: 'ignore' }), 'close'))[0] === 0

t.test('the session image', async (t) => {
  const stages = parseDockerfile(await readFile(join(repo, 'container/Dockerfile'), 'utf8'))
  const image = imageConfig(stages)
  t.equal(image.user, 'node', 'runs as a non-root user')
  t.same(stages.map((s) => s.name), ['build', 'binding', 'stage-2'], 'build, binding, runtime')
  for (const stage of stages) t.match(stage.from, /^node:24-bookworm-slim@sha256:[0-9a-f]{64}$/, `${stage.name}: Node 24, pinned by digest`)
  const runs = runLines(stages)
  const skipped = cannotRunHere(runs)
  for (const { run } of skipped.filter((s) => s.run.startsWith('apt-get '))) {
    const packages = /apt-get install -y --no-install-recommends ([\w\s-]+?)(?: &&|$)/.exec(run)?.[1]!.trim().split(/\s+/) ?? []
    t.ok(packages.length > 0, `apt-get installs: ${packages.join(' ')}`)
    for (const pkg of packages) {
      t.ok(APT_PROGRAMS[pkg], `the image's ${pkg} is known here`)
      t.ok(await which(APT_PROGRAMS[pkg] ?? pkg), `${APT_PROGRAMS[pkg]} (from ${pkg}) is on this machine`)
    }
  }

  const build = await buildLocally(stages, { context: repo, root, cannotRunHere: skipped })
  t.same(build.ran, runs.filter((r) => !skipped.some((s) => s.run === r)), 'every other RUN line ran, in order')
  t.ok(build.ran.some((r) => r.startsWith('npm ci --ignore-scripts')), 'including the build stage npm ci')
  t.ok(build.ran.some((r) => r.startsWith('npm install --omit=dev --no-package-lock')), "and the binding stage's npm install and strip")

  const app = join(build.rootOf('stage-2'), 'app')
  const pkg = JSON.parse(await readFile(join(app, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  t.same(pkg.dependencies, { 'chromadb-js-bindings-linux-x64-gnu': '1.0.5' }, 'only the pinned Chroma binding is installed')
  const binding = await stat(join(app, 'node_modules/chromadb-js-bindings-linux-x64-gnu/chromadb-js-bindings.linux-x64-gnu.node'))
  t.ok(binding.size < 100e6, `the binding in the image is stripped: ${(binding.size / 1e6).toFixed(0)} MB`)

  const fixture = await buildSnapshotFixture(join(root, 'fixture'), { count: 30, dim: 8 })
  const port = await freeLoopbackPort()
  const secrets = { sessionToken: 'cls_image-test-session-token', controlToken: 'clc_image-test-control-token', leaseKey: 'image-test-lease-key-0123456789' }
  const secretFile = join(root, 'session-secret.json')
  await writeFile(secretFile, JSON.stringify(secrets), { mode: 0o600 })
  const env: Record<string, string> = {
    ...Object.fromEntries(Object.entries(image.env).map(([k, v]) => [k, build.inImage(v)])),
    // The image's fixed ports, moved to free ones: this machine runs other sessions.
    CHROMA_PORT: String(port),
    CHROMA_INTERNAL_PORT: String(await freeLoopbackPort()),
    SESSION_ID: 'image-test',
    // What the process launcher does; on Fargate the agent reads the same document from Secrets Manager.
    SESSION_SECRET_FILE: secretFile,
    SNAPSHOT_URI: `file://${fixture.tarGzPath}`,
    HOME: root,
  }
  t.equal(image.env.CHROMA_HOST, '0.0.0.0', 'the session listens on every interface (the task ENI)')
  t.ok(env.CHROMA_DATA_DIR!.startsWith(build.rootOf('stage-2')), "the image's data directory, in the runtime stage")
  const [command, ...args] = image.entrypoint.map(build.inImage)
  const agent = spawn(command!, args, { cwd: join(build.rootOf('stage-2'), image.workdir), env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let output = ''
  agent.stdout.on('data', (c: Buffer) => (output += c))
  agent.stderr.on('data', (c: Buffer) => (output += c))
  const exited = once(agent, 'exit').then(([code]) => code as number | null)
  t.teardown(async () => {
    if (agent.exitCode === null && agent.signalCode === null) process.kill(-agent.pid!, 'SIGKILL')
    await exited
  })

  const [hc, ...hcArgs] = image.healthcheck.map(build.inImage)
  const healthcheck = async (extra: Record<string, string> = {}) => (await once(spawn(hc!, hcArgs, { env: { PATH: process.env.PATH!, ...env, ...extra }, stdio: 'ignore' }), 'close'))[0] as number
  const deadline = Date.now() + 60_000
  while ((await healthcheck()) !== 0 && Date.now() < deadline && agent.exitCode === null) await sleep(200)
  t.equal(await healthcheck(), 0, 'HEALTHCHECK passes once the session serves', { output })
  t.equal(await countChroma({ host: '127.0.0.1', port, token: secrets.sessionToken }, fixture.collection), 30, 'the agent built and installed by the image serves the snapshot')
  t.notOk(await stat(secretFile).catch(() => null), 'the agent deleted the secret file once read')

  process.kill(agent.pid!, 'SIGTERM')
  t.equal(await exited, 0, 'stops cleanly on SIGTERM')
  t.equal(await healthcheck(), 1, 'and the HEALTHCHECK fails once it is gone')
})
