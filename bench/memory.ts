/**
 * `npm run bench:memory`: where the control plane's idle memory goes.
 *
 * 1. Module by module: each group of dependencies imported (and, where that is what costs,
 *    used once: Prisma's client runs a query, prom-client collects its default metrics) in a
 *    fresh Node process of its own, bundled as `npm start` bundles the server (esbuild,
 *    dependencies left in node_modules), RSS after a full GC minus a bare Node's. Groups share
 *    dependencies (Node's own modules, undici), so the deltas do not add up exactly.
 * 2. The server itself as `npm start` runs it (process launcher, embedded Postgres), idle for
 *    40 s (RSS each second: V8 compacts the start's garbage only after some idle time), then: RSS and how /proc splits it (file-backed: the node binary's code; anonymous: heaps),
 *    V8's heap and external memory, and a heap snapshot summed by what V8 calls each object.
 * 3. A Fargate replica (LAUNCHER=fargate against the ECS fake) idle for as long: its RSS each
 *    second and its V8 heap.
 *
 * Writes the `memory` section of BENCHMARKS.md.
 */
import { execFileSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { build, type Plugin } from 'esbuild'
// @ts-expect-error: a plain .mjs script, without types
import { prismaWasmFromFile, queryCompilerWasm, QUERY_COMPILER_WASM } from '../scripts/prisma-wasm.mjs'
import { EcsFake } from '../test/helpers/ecs-fake.ts'
import { sample } from '../test/helpers/fake-session.ts'
import { startControlPlane } from './control-plane.ts'
import { provenance, writeSection } from './report.ts'

/** Idle long enough for V8's memory reducer to compact the heap after start (it ran after about 20 s here). */
const IDLE_SECONDS = 40
/** Two servers side by side take longer to settle (each one's memory reducer waits for idle time, which the other's start takes). */
const ALLOCATOR_IDLE_SECONDS = 90
const repo = new URL('..', import.meta.url).pathname
const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-memory-'))
await chmod(dir, 0o755)
const snapshots = join(dir, 'snapshots')
await mkdir(snapshots)
const diagnostics = join(dir, 'diagnostics')
await mkdir(diagnostics)

const cp = await startControlPlane(join(dir, 'data'), {
  SNAPSHOT_ROOT: snapshots,
  // A heap snapshot on SIGWINCH, written where this benchmark reads it (not SIGUSR2, on which
  // close-with-grace shuts the server down; SIGUSR1 is Node's inspector's).
  NODE_OPTIONS: `--heapsnapshot-signal=SIGWINCH --diagnostic-dir=${diagnostics}`,
})

/** Entry code per group: what the server does with the module at start. */
const GROUPS: Array<{ name: string; code: string }> = [
  { name: 'Node alone', code: '' },
  { name: 'pino (the logger)', code: `import pino from 'pino'; pino({ level: 'warn' })` },
  {
    name: 'Fastify, its TypeBox provider, ajv',
    code: `import Fastify from 'fastify'; import '@fastify/type-provider-typebox'; import Ajv from 'ajv'; import addFormats from 'ajv-formats'; addFormats(new Ajv()); const app = Fastify(); await app.ready()`,
  },
  {
    name: '@fastify/swagger and @fastify/swagger-ui, registered',
    code: `import Fastify from 'fastify'; import swagger from '@fastify/swagger'; import ui from '@fastify/swagger-ui'; const app = Fastify(); await app.register(swagger, { openapi: { info: { title: 't', version: '1' } } }); await app.register(ui, { routePrefix: '/docs' }); await app.ready()`,
  },
  {
    name: "Prisma's client (generated, WebAssembly query compiler) with @prisma/adapter-pg, one query run",
    code: `import { PrismaClient } from '${repo}src/generated/prisma/client.ts'; import { PrismaPg } from '@prisma/adapter-pg'; const db = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) }); await db.session.findFirst(); await db.apiKey.findFirst()`,
  },
  { name: 'pg (node-postgres) alone, one query run', code: `import pg from 'pg'; const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL }); await pool.query('SELECT 1')` },
  { name: '@aws-sdk/client-s3 (S3Client constructed)', code: `import { S3Client } from '@aws-sdk/client-s3'; new S3Client({ region: 'us-east-1' })` },
  {
    name: '@aws-sdk/client-ecs and client-secrets-manager (LAUNCHER=fargate only)',
    code: `import { ECSClient } from '@aws-sdk/client-ecs'; import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager'; new ECSClient({ region: 'us-east-1' }); new SecretsManagerClient({ region: 'us-east-1' })`,
  },
  {
    name: '@aws-sdk/client-ec2 (with LAUNCHER=fargate, only with ECS_ASSIGN_PUBLIC_IP; else in a short-lived child)',
    code: `import { EC2Client } from '@aws-sdk/client-ec2'; new EC2Client({ region: 'us-east-1' })`,
  },
  { name: 'prom-client with its default metrics', code: `import { collectDefaultMetrics, Registry } from 'prom-client'; const r = new Registry(); collectDefaultMetrics({ register: r }); await r.metrics()` },
  { name: 'undici and @fastify/reply-from (the proxy)', code: `import 'undici'; import '@fastify/reply-from'` },
]

const groups: Array<{ name: string; rssMb: number; heapMb: number; externalMb: number }> = []
let server: Awaited<ReturnType<typeof idleServer>>
let fargate: Awaited<ReturnType<typeof idleFargateReplica>>
let allocator: Awaited<ReturnType<typeof allocatorComparison>>
try {
  const entries = join(repo, 'dist', 'memory')
  await mkdir(entries, { recursive: true })
  await writeFile(join(entries, QUERY_COMPILER_WASM), await queryCompilerWasm())
  for (const [i, group] of GROUPS.entries()) {
    const source = join(entries, `group-${i}.ts`)
    await writeFile(
      source,
      `${group.code}\nfor (let i = 0; i < 3; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 100)) }\nconst m = process.memoryUsage(); console.log(JSON.stringify({ rss: m.rss, heap: m.heapUsed, external: m.external })); process.exit(0)\n`,
    )
    const outfile = join(entries, `group-${i}.mjs`)
    await build({
      entryPoints: [source],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      conditions: ['chroma-lease-source'],
      // As scripts/build.mjs bundles the server: Prisma's query compiler from its .wasm file.
      plugins: [prismaWasmFromFile as Plugin, { name: 'external', setup: (b) => b.onResolve({ filter: /^[^./]/ }, (a) => ({ path: a.path, external: true })) }],
      logLevel: 'warning',
    })
    const out = execFileSync(process.execPath, ['--expose-gc', outfile], { env: { ...process.env, DATABASE_URL: cp.databaseUrl }, encoding: 'utf8' })
    const m = JSON.parse(out.trim().split('\n').at(-1)!)
    groups.push({ name: group.name, rssMb: m.rss / 2 ** 20, heapMb: m.heap / 2 ** 20, externalMb: m.external / 2 ** 20 })
    console.log(group.name, groups.at(-1))
  }
  await rm(entries, { recursive: true, force: true })
  server = await idleServer()
  fargate = await idleFargateReplica()
  allocator = await allocatorComparison()
} finally {
  await cp.stop()
  await rm(dir, { recursive: true, force: true })
}
await report()

/**
 * A Fargate replica idle (no session) against the ECS fake, on the same Postgres: what
 * the ECS and Secrets Manager SDKs, the preflight at start and the workers' passes cost.
 */
async function idleFargateReplica() {
  console.log(`a Fargate replica, idle ${IDLE_SECONDS} s`)
  const fake = await EcsFake.start({ stubAgents: true })
  try {
    const replica = await startControlPlane(join(dir, 'fargate'), {
      ...fake.controlPlaneEnv(),
      DATABASE_URL: cp.databaseUrl,
      SNAPSHOT_ROOT: snapshots,
    })
    try {
      const timeline: number[] = []
      for (let i = 0; i < IDLE_SECONDS; i++) {
        await sleep(1000)
        timeline.push(Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${replica.pid}/status`, 'utf8'))?.[1]) / 1024)
      }
      const metrics = await (await fetch(`${replica.url}/metrics`)).text()
      return {
        timeline,
        heapUsedMb: (sample(metrics, 'chroma_lease_nodejs_heap_size_used_bytes') ?? NaN) / 2 ** 20,
        heapTotalMb: (sample(metrics, 'chroma_lease_nodejs_heap_size_total_bytes') ?? NaN) / 2 ** 20,
        // The preflight's lookups, made from a short-lived child process: the fake counts them all the same.
        ec2Calls: fake.count('DescribeSubnets') + fake.count('DescribeSecurityGroups'),
      }
    } finally {
      await replica.stop()
    }
  } finally {
    await fake.close()
  }
}

/**
 * glibc's malloc arenas: two servers idle side by side (so the machine's load is the same
 * for both), on the same Postgres, one as `npm start` runs it and one with MALLOC_ARENA_MAX=2
 * (glibc's default allows 8 per core; Node's threads each may take one). RSS each second.
 */
async function allocatorComparison() {
  console.log(`two servers idle ${ALLOCATOR_IDLE_SECONDS} s side by side: default malloc arenas, MALLOC_ARENA_MAX=2`)
  const variants: Array<{ name: string; env: Record<string, string> }> = [{ name: 'default', env: {} }, { name: 'MALLOC_ARENA_MAX=2', env: { MALLOC_ARENA_MAX: '2' } }]
  const servers = await Promise.all(variants.map((v, i) => startControlPlane(join(dir, `allocator-${i}`), { DATABASE_URL: cp.databaseUrl, SNAPSHOT_ROOT: snapshots, ...v.env })))
  try {
    const timelines: number[][] = variants.map(() => [])
    for (let i = 0; i < ALLOCATOR_IDLE_SECONDS; i++) {
      await sleep(1000)
      for (const [j, server] of servers.entries()) timelines[j]!.push(Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${server.pid}/status`, 'utf8'))?.[1]) / 1024)
    }
    return variants.map((v, j) => ({ name: v.name, timeline: timelines[j]! }))
  } finally {
    await Promise.all(servers.map((s) => s.stop()))
  }
}

async function idleServer() {
  console.log(`the server, idle ${IDLE_SECONDS} s`)
  const timeline: number[] = []
  for (let i = 0; i < IDLE_SECONDS; i++) {
    await sleep(1000)
    const text = await readFile(`/proc/${cp.pid}/status`, 'utf8')
    timeline.push(Number(/VmRSS:\s+(\d+)/.exec(text)?.[1]) / 1024)
  }
  const status = await readFile(`/proc/${cp.pid}/status`, 'utf8')
  const kb = (field: string, text = status) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(text)?.[1] ?? NaN) / 1024
  const rollup = await readFile(`/proc/${cp.pid}/smaps_rollup`, 'utf8')
  const metrics = await (await fetch(`${cp.url}/metrics`)).text()
  const bytes = (name: string, labels: Record<string, string> = {}) => (sample(metrics, name, labels) ?? NaN) / 2 ** 20
  const spaces = ['new_space', 'old_space', 'code_space', 'map_space', 'large_object_space'].map((space) => ({ space, usedMb: bytes('chroma_lease_nodejs_heap_space_size_used_bytes', { space }) }))
  // A heap snapshot, summed by node type and constructor name.
  process.kill(cp.pid, 'SIGWINCH')
  let file: string | undefined
  for (let i = 0; i < 300 && !file; i++) {
    await sleep(200)
    const names = (await readdir(diagnostics)).filter((n) => n.endsWith('.heapsnapshot'))
    // Written in one go; wait until it parses.
    for (const n of names) {
      const text = await readFile(join(diagnostics, n), 'utf8')
      try {
        JSON.parse(text)
        file = join(diagnostics, n)
      } catch {}
    }
  }
  const snapshot = file ? JSON.parse(await readFile(file, 'utf8')) : null
  const top = snapshot ? summarise(snapshot) : []
  const strings = snapshot ? largestStrings(snapshot) : []
  return {
    timeline,
    rssMb: kb('VmRSS'),
    fileMb: kb('RssFile'),
    anonMb: kb('RssAnon'),
    pssMb: kb('Pss', rollup),
    heapUsedMb: bytes('chroma_lease_nodejs_heap_size_used_bytes'),
    heapTotalMb: bytes('chroma_lease_nodejs_heap_size_total_bytes'),
    externalMb: bytes('chroma_lease_nodejs_external_memory_bytes'),
    spaces,
    top,
    strings,
  }
}

/** The largest strings on the heap (mostly sources of loaded modules, which V8 keeps), with how they begin. */
function largestStrings(snapshot: any): Array<{ mb: number; begins: string }> {
  const fields: string[] = snapshot.snapshot.meta.node_fields
  const types: string[] = snapshot.snapshot.meta.node_types[0]
  const width = fields.length
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f))
  const found: Array<{ mb: number; begins: string }> = []
  const nodes: number[] = snapshot.nodes
  for (let i = 0; i < nodes.length; i += width) {
    if (types[nodes[i + typeAt!]!] !== 'string' || nodes[i + sizeAt!]! < 200_000) continue
    const text: string = snapshot.strings[nodes[i + nameAt!]!]
    found.push({ mb: nodes[i + sizeAt!]! / 2 ** 20, begins: text.slice(0, 90).replace(/\s+/g, ' ') })
  }
  return found.sort((a, b) => b.mb - a.mb).slice(0, 10)
}

/** The heap snapshot's self sizes, summed by node type (and name, for objects and code). */
function summarise(snapshot: any): Array<{ what: string; mb: number; count: number }> {
  const fields: string[] = snapshot.snapshot.meta.node_fields
  const types: string[] = snapshot.snapshot.meta.node_types[0]
  const width = fields.length
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f))
  const sums = new Map<string, { bytes: number; count: number }>()
  const nodes: number[] = snapshot.nodes
  for (let i = 0; i < nodes.length; i += width) {
    const type = types[nodes[i + typeAt!]!]!
    const name: string = snapshot.strings[nodes[i + nameAt!]!]
    const key = type === 'object' || type === 'closure' || type === 'native' ? `${type}: ${name.slice(0, 60)}` : type
    const s = sums.get(key) ?? { bytes: 0, count: 0 }
    s.bytes += nodes[i + sizeAt!]!
    s.count++
    sums.set(key, s)
  }
  return [...sums.entries()].map(([what, s]) => ({ what, mb: s.bytes / 2 ** 20, count: s.count })).sort((a, b) => b.mb - a.mb).slice(0, 12)
}

async function report() {
  const f = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '–')
  const base = groups[0]!
  const lines = [
    `${provenance()}`,
    '',
    '**Module by module**: each group in a fresh Node process, RSS after a full GC; the delta is over a bare Node\'s.',
    '',
    '| what is loaded | RSS | over bare Node | V8 heap used | external (buffers, WebAssembly) |',
    '|---|---|---|---|---|',
    ...groups.map((g) => `| ${g.name} | ${f(g.rssMb)} MB | ${g === base ? '–' : `${f(g.rssMb - base.rssMb)} MB`} | ${f(g.heapMb)} MB | ${f(g.externalMb)} MB |`),
    '',
    `**The server idle** (\`npm start\`'s bundle, LAUNCHER=process, no session), VmRSS each second from ready: ${server.timeline.map((m) => f(m, 0)).join(' ')} MB. At ${IDLE_SECONDS} s: RSS ${f(server.rssMb)} MB, of which ${f(server.fileMb)} MB file-backed (the node binary's and modules' mapped code) and ${f(server.anonMb)} MB anonymous; V8 heap ${f(server.heapUsedMb)} MB used of ${f(server.heapTotalMb)} MB reserved (${server.spaces.map((s) => `${s.space} ${f(s.usedMb)}`).join(', ')}), external ${f(server.externalMb)} MB.`,
    '',
    `**A Fargate replica idle** (the same bundle, LAUNCHER=fargate against the ECS fake, no ECS_ASSIGN_PUBLIC_IP, no session; its preflight's ${fargate.ec2Calls} EC2 lookups made from a short-lived child process), VmRSS each second from ready: ${fargate.timeline.map((m) => f(m, 0)).join(' ')} MB; V8 heap ${f(fargate.heapUsedMb)} MB used of ${f(fargate.heapTotalMb)} MB reserved at ${IDLE_SECONDS} s.`,
    '',
    `**Malloc arenas**: two more servers idle side by side (LAUNCHER=process, the same Postgres), VmRSS each second from ready: ${allocator.map((a) => `${a.name}: ${a.timeline.map((m) => f(m, 0)).join(' ')} MB`).join('; ')}. Over the last 10 s: ${allocator.map((a) => `${a.name} ${f(a.timeline.slice(-10).reduce((x, y) => x + y, 0) / 10)} MB`).join(', ')}.`,
    '',
    'Heap snapshot of that idle server, the largest kinds by self size:',
    '',
    '| kind (V8\'s node type: constructor) | MB | count |',
    '|---|---|---|',
    ...server.top.map((t) => `| ${t.what.replaceAll('|', '\\|')} | ${f(t.mb, 2)} | ${t.count} |`),
    '',
    'Its largest strings (V8 keeps the source text of every module it has loaded):',
    '',
    '| MB | begins with |',
    '|---|---|',
    ...server.strings.map((x) => `| ${f(x.mb, 2)} | \`${x.begins.replaceAll('`', "'").replaceAll('|', '\\|')}\` |`),
  ]
  const text = lines.join('\n')
  console.log(`\n${text}`)
  await writeSection('memory', text)
}
