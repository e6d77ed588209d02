import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, cp, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import t from 'tap'
import { freeLoopbackPort } from '../src/free-port.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { stopAll } from './helpers/app.ts'

// The README's examples, run as written (issue 17, item 1): every ```sh and ```ts block
// of README.md runs, in order, in a copy of this checkout, against the server that its
// "Run it" block starts (`npm start`, no configuration). So the README cannot drift from
// the product. One substitution: the port. The README says 8080; here it is a free port
// (PORT, a documented setting), because another test or process may hold 8080.

const repo = resolve('.')
const readme = readFileSync(join(repo, 'README.md'), 'utf8')

interface Block {
  lang: 'sh' | 'ts'
  line: number
  body: string
}

function blocksOf(markdown: string): Block[] {
  const blocks: Block[] = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(sh|ts)\s*$/.exec(lines[i]!)
    if (!open) continue
    const start = i
    const body: string[] = []
    for (i++; i < lines.length && !lines[i]!.startsWith('```'); i++) body.push(lines[i]!)
    blocks.push({ lang: open[1] as 'sh' | 'ts', line: start + 1, body: body.join('\n') })
  }
  return blocks
}

/** The blocks that cannot run here, each found by a line that starts with `match`, and why. Each entry must match exactly one block. */
const SKIPPED: Array<{ match: string; reason: string }> = [
  { match: 'npm test', reason: '"Test it": npm test is the suite this test runs in (and its npm ci is the install this test uses)' },
  { match: 'npx chroma-lease sessions list', reason: 'the CLI reference: placeholder keys and ids (clk_…, 6ee81e62-…); each command runs in test/cli.test.ts' },
  { match: 'docker build', reason: 'needs Docker and an AWS account (ECR); test/image.test.ts and test/control-plane-image.test.ts build the images' },
]
/** The block that starts the server: its `npm start` is this test's server; its `npm ci` is the install this test runs from. */
const SERVER_BLOCK = 'npm start'
/** What some blocks must print, beyond exiting 0 (the README says so in its `# →` lines). */
const EXPECTED_OUTPUT: Array<{ match: string; output: RegExp }> = [
  { match: 'npm run snapshot:example', output: /"ids":\[\["r-3"[\s\S]*"status":"released"/ },
  { match: "import { ChromaClient } from 'chromadb'", output: /r-3/ },
  // The Run it server's warm pool is off (WARM_POOL_MAX=0), so the hint example shows the refusal.
  { match: 'curl -sS http://127.0.0.1:8080/v1/warm-pool/hints', output: /"code":"warm_pool_disabled"/ },
]

const blocks = blocksOf(readme)
const matching = (needle: string) => blocks.filter((b) => b.body.split('\n').some((l) => l.trim().startsWith(needle)))

t.test('the skip list is short and current: every entry matches one block', async (t) => {
  t.ok(blocks.length >= 4, `found ${blocks.length} sh/ts blocks`)
  for (const s of [...SKIPPED, { match: SERVER_BLOCK, reason: '' }, ...EXPECTED_OUTPUT.map((e) => ({ match: e.match }))]) {
    t.equal(matching(s.match).length, 1, `exactly one block has a line with ${JSON.stringify(s.match)}`)
  }
  const [server] = matching(SERVER_BLOCK)
  t.same(server?.body.trim().split('\n'), ['npm ci', 'npm start'], 'the "Run it" block is npm ci and npm start, nothing more to run')
})

// ---- a copy of this checkout, as a user has it after npm ci ---------------------------
const root = await mkdtemp(join(tmpdir(), 'readme-'))
await chmod(root, 0o755) // the embedded Postgres runs as the postgres user
const copy = join(root, 'chroma-lease')
const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repo, encoding: 'utf8' })
  .split('\0')
  .filter((f) => f && existsSync(join(repo, f)))
for (const f of files) {
  await mkdir(dirname(join(copy, f)), { recursive: true })
  await cp(join(repo, f), join(copy, f))
}
// What npm ci leaves that git does not track: the installed packages and the generated Prisma client.
await symlink(join(repo, 'node_modules'), join(copy, 'node_modules'))
await cp(join(repo, 'src/generated'), join(copy, 'src/generated'), { recursive: true })

const port = await freeLoopbackPort()
const base = `http://127.0.0.1:${port}`
/** A user's shell: no configuration of ours leaks in. */
const env: Record<string, string> = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: process.env.HOME ?? root,
  LANG: 'C.UTF-8',
  TMPDIR: tmpdir(),
  PORT: String(port),
}
const forPort = (text: string) => text.replaceAll('8080', String(port))

let server: ChildProcess | null = null
let serverOutput = ''
t.teardown(async () => {
  // Sessions outlive the server on purpose (the next start adopts them): stop them first.
  const list = await fetch(`${base}/v1/sessions?limit=1000`).then((r) => r.json() as Promise<{ sessions: Array<{ id: string; status: string }> }>).catch(() => null)
  for (const s of list?.sessions ?? []) {
    if (s.status !== 'STOPPED' && s.status !== 'FAILED') await fetch(`${base}/v1/sessions/${s.id}?force=true&reason=readme%20test`, { method: 'DELETE' }).catch(() => {})
  }
  if (server && server.exitCode === null) {
    process.kill(-server.pid!, 'SIGTERM')
    const exited = once(server, 'exit')
    const timer = setTimeout(() => server!.exitCode === null && process.kill(-server!.pid!, 'SIGKILL'), 30_000)
    await exited
    clearTimeout(timer)
  }
  await stopAll(new ProcessLauncher({ rootDir: join(copy, '.data', 'sessions') }))
  await rm(root, { recursive: true, force: true })
})

async function waitReady(deadlineMs: number) {
  const deadline = Date.now() + deadlineMs
  for (;;) {
    const ok = await fetch(`${base}/readyz`).then((r) => r.ok, () => false)
    if (ok) return
    if (server?.exitCode !== null || Date.now() > deadline) throw new Error(`npm start did not get ready:\n${serverOutput}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

function run(command: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((done) => {
    const child = spawn(command, args, { cwd: copy, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let output = ''
    child.stdout!.on('data', (d) => (output += d))
    child.stderr!.on('data', (d) => (output += d))
    const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), timeoutMs)
    child.on('exit', (code) => {
      clearTimeout(timer)
      done({ code, output })
    })
  })
}

t.test('every sh and ts block of the README runs against npm start', async (t) => {
  for (const block of blocks) {
    const where = `README.md:${block.line} (${block.lang})`
    const skip = SKIPPED.find((s) => matching(s.match).includes(block))
    if (skip) {
      t.comment(`skipped ${where}: ${skip.reason}`)
      continue
    }
    if (block.lang === 'ts' && block.body.includes("'@chroma-lease/client'") && !existsSync(join(repo, 'packages/client/package.json'))) {
      t.comment(`skipped ${where}: it imports @chroma-lease/client, which does not exist in this checkout yet`)
      continue
    }
    if (matching(SERVER_BLOCK).includes(block)) {
      // The "Run it" block: `npm start`, in the background, as the reader leaves it running.
      server = spawn('bash', ['-c', 'exec npm start'], { cwd: copy, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
      server.stdout!.on('data', (d) => (serverOutput += d))
      server.stderr!.on('data', (d) => (serverOutput += d))
      await waitReady(180_000)
      t.pass(`${where}: npm start serves ${base}`)
      continue
    }
    t.ok(server, `${where} runs after the server started`)
    let result
    if (block.lang === 'sh') {
      result = await run('bash', ['-e', '-o', 'pipefail', '-c', forPort(block.body)], 180_000)
    } else {
      const file = join(copy, `readme-${block.line}.ts`)
      await writeFile(file, forPort(block.body))
      result = await run('npx', ['tsx', file], 180_000)
    }
    t.equal(result.code, 0, `${where} exits 0`, { output: result.output })
    const expected = EXPECTED_OUTPUT.find((e) => matching(e.match).includes(block))
    if (expected) t.match(result.output, expected.output, `${where} prints what the README says`)
  }
})
