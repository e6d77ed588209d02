/**
 * `npm run bench`: the control plane's performance, as ratios measured in one run on
 * one machine (it is shared and noisy; absolute numbers drift, ratios less so).
 *
 * 1. Lease operations: acquire + release on a READY shared session at 64 concurrent
 *    clients (@chroma-lease/client, as services call it), beside pgbench's simple-update
 *    TPS on the same Postgres.
 * 2. Queries through the proxy beside the same queries sent to the session directly, and
 *    through nginx (Debian's package, when installed) as a peer proxy to the same session.
 * 3. The control plane's RSS under that load.
 *
 * Options: --seconds=N (per measured phase, default 15), --only=leases|proxy.
 * Writes BENCHMARKS.md (the results section) and prints a summary.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { ChromaLeaseClient, type Lease } from '@chroma-lease/client'
import { buildSnapshotFixture } from '../test/helpers/snapshot-fixture.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { stopAll } from '../test/helpers/app.ts'
import { startControlPlane } from './control-plane.ts'
import { closedLoop, Latencies, sampleRss, timed, timedCall } from './load.ts'
import { findNginx, NGINX_MISSING, startNginx } from './nginx.ts'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const SECONDS = Number(arg('seconds') ?? 15)
const ONLY = arg('only')
const LEASE_CLIENTS = 64
const QUERY_CLIENTS = 16
const PGBENCH_CLIENTS = 16
const UNLOADED_SECONDS = Math.max(3, SECONDS / 3)

const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-bench-'))
await chmod(dir, 0o755)
console.log('building a 4000 x 128 snapshot')
const fixture = await buildSnapshotFixture(join(dir, 'snapshots'), { collection: 'bench', count: 4000, dim: 128 })
const cp = await startControlPlane(join(dir, 'data'), {
  SNAPSHOT_ROOT: join(dir, 'snapshots'),
  IDLE_TTL_SECONDS: '600',
  LEASE_TTL_SECONDS: '600',
})
// The lease operations go through the client (global fetch: a connection per concurrent
// client); the Chroma queries through an undici pool, the same for direct and proxied.
const client = new ChromaLeaseClient({ url: cp.url })
const api = new Pool(cp.url, { connections: QUERY_CLIENTS, pipelining: 1 })
const results: Record<string, unknown> = {}

try {
  // One long lease keeps the shared session READY throughout (the client renews it).
  const holder = await client.acquire({ snapshot: `file://${fixture.tarPath}`, collection: 'bench', waitSeconds: 120, holder: 'bench' })

  if (!ONLY || ONLY === 'leases') results.leases = await benchLeases()
  if (!ONLY || ONLY === 'proxy') results.proxy = await benchProxy(holder)
} finally {
  await api.close()
  await cp.stop()
  // Sessions outlive the control plane by design; stop the one the bench started.
  await stopAll(new ProcessLauncher({ rootDir: join(dir, 'data', 'sessions') }))
  await rm(dir, { recursive: true, force: true })
}
await report(results)

async function benchLeases() {
  const request = { snapshot: `file://${fixture.tarPath}`, collection: 'bench', keepAlive: false }
  const acquire = new Latencies()
  const release = new Latencies()
  const pair = async () => {
    const lease = await timedCall(acquire, () => client.acquire(request))
    await timedCall(release, () => lease.release())
  }
  console.log(`leases: warm-up, then ${SECONDS}s at ${LEASE_CLIENTS} clients`)
  await closedLoop(LEASE_CLIENTS, 3, pair)
  acquire.reset()
  release.reset()
  const rss = sampleRss(cp.pid)
  const run = await closedLoop(LEASE_CLIENTS, SECONDS, pair)
  const memory = await rss.stop()
  const pairsPerSecond = run.iterations / run.seconds
  // The same pair from one client: each operation's own cost, without 63 others queued ahead of it.
  console.log(`leases: ${UNLOADED_SECONDS}s at 1 client`)
  const acquire1 = new Latencies()
  const release1 = new Latencies()
  await closedLoop(1, UNLOADED_SECONDS, async () => {
    const lease = await timedCall(acquire1, () => client.acquire(request))
    await timedCall(release1, () => lease.release())
  })
  console.log('pgbench: simple-update (-N) on the same Postgres')
  const pgbenchTps = pgbench(cp.databaseUrl)
  return {
    pairsPerSecond,
    opsPerSecond: pairsPerSecond * 2,
    acquire: acquire.summary(),
    release: release.summary(),
    unloaded: { acquire: acquire1.summary(), release: release1.summary() },
    pgbenchTps,
    ratioToPgbench: (pairsPerSecond * 2) / pgbenchTps,
    memory,
  }
}

async function benchProxy(holder: Lease) {
  const direct = new Pool(holder.session.endpoint!.url, { connections: QUERY_CLIENTS })
  // nginx in front of the same session, sent what a direct caller sends (the session token).
  const nginxBinary = findNginx()
  if (!nginxBinary) console.log(NGINX_MISSING)
  const nginx = nginxBinary ? await startNginx(nginxBinary, join(dir, 'nginx'), holder.session.endpoint!.url) : null
  const viaNginx = nginx ? new Pool(nginx.url, { connections: QUERY_CLIENTS }) : null
  // "Direct" is a lease holder going to session.endpoint: through the session agent's front, with the session token.
  const asHolder = { 'x-chroma-token': holder.sessionToken! }
  const collectionPath = '/api/v2/tenants/default_tenant/databases/default_database/collections'
  const collection = JSON.parse(await timed(direct, new Latencies(), { method: 'GET', path: `${collectionPath}/bench`, headers: asHolder }, 200))
  const queryPath = `${collectionPath}/${collection.id}/query`
  const bodies = Array.from({ length: 64 }, (_, i) =>
    JSON.stringify({ query_embeddings: [fixture.vector(i * 7)], n_results: 10, include: ['distances', 'documents'] }),
  )
  const phase = async (pool: Pool, headers: Record<string, string>, latencies: Latencies, seconds: number) => {
    let i = 0
    return closedLoop(QUERY_CLIENTS, seconds, () =>
      timed(pool, latencies, { method: 'POST', path: queryPath, headers: { 'content-type': 'application/json', ...headers }, body: bodies[i++ % bodies.length] }, 200).then(() => {}),
    )
  }
  const viaProxy = { 'x-chroma-token': holder.token }
  console.log(`proxy: warm-up, then 2 x ${SECONDS / 2}s direct, through the proxy${viaNginx ? ' and through nginx' : ''}, interleaved, at ${QUERY_CLIENTS} clients`)
  await phase(direct, asHolder, new Latencies(), 2)
  await phase(api, viaProxy, new Latencies(), 2)
  if (viaNginx) await phase(viaNginx, asHolder, new Latencies(), 2)
  const d = new Latencies()
  const p = new Latencies()
  const n = new Latencies()
  let directRun = { iterations: 0, seconds: 0 }
  let proxyRun = { iterations: 0, seconds: 0 }
  let nginxRun = { iterations: 0, seconds: 0 }
  const add = (run: typeof directRun, more: typeof directRun) => ({ iterations: run.iterations + more.iterations, seconds: run.seconds + more.seconds })
  const rss = sampleRss(cp.pid)
  const nginxRss = nginx ? sampleRss(nginx.pid) : null
  for (let round = 0; round < 2; round++) {
    directRun = add(directRun, await phase(direct, asHolder, d, SECONDS / 2))
    proxyRun = add(proxyRun, await phase(api, viaProxy, p, SECONDS / 2))
    if (viaNginx) nginxRun = add(nginxRun, await phase(viaNginx, asHolder, n, SECONDS / 2))
  }
  const memory = await rss.stop()
  const nginxMemory = await nginxRss?.stop()
  // The proxy's own cost per request: one client, direct and proxied requests alternating,
  // so whatever else the machine does at that moment falls on both alike.
  console.log(`proxy: ${UNLOADED_SECONDS}s at 1 client, direct and proxied requests alternating`)
  const d1 = new Latencies()
  const p1 = new Latencies()
  const n1 = new Latencies()
  let k = 0
  await closedLoop(1, UNLOADED_SECONDS, async () => {
    const body = bodies[k++ % bodies.length]
    const query = { method: 'POST' as const, path: queryPath, body }
    await timed(direct, d1, { ...query, headers: { 'content-type': 'application/json', ...asHolder } }, 200)
    await timed(api, p1, { ...query, headers: { 'content-type': 'application/json', ...viaProxy } }, 200)
    if (viaNginx) await timed(viaNginx, n1, { ...query, headers: { 'content-type': 'application/json', ...asHolder } }, 200)
  })
  await direct.close()
  await viaNginx?.close()
  await nginx?.stop()
  const directRps = directRun.iterations / directRun.seconds
  const proxyRps = proxyRun.iterations / proxyRun.seconds
  const nginxRps = viaNginx ? nginxRun.iterations / nginxRun.seconds : NaN
  return {
    direct: { rps: directRps, ...d.summary() },
    proxy: { rps: proxyRps, ...p.summary() },
    nginx: viaNginx ? { rps: nginxRps, ...n.summary(), unloaded: n1.summary(), addedP50Ms: n1.percentile(50) - d1.percentile(50), loadedAddedP50Ms: n.percentile(50) - d.percentile(50), throughputRatio: nginxRps / directRps, memory: nginxMemory } : null,
    unloaded: { direct: d1.summary(), proxy: p1.summary(), addedP50Ms: p1.percentile(50) - d1.percentile(50) },
    loadedAddedP50Ms: p.percentile(50) - d.percentile(50),
    throughputRatio: proxyRps / directRps,
    memory,
  }
}

function pgbench(databaseUrl: string): number {
  const url = new URL(databaseUrl)
  const env = { ...process.env, PGPASSWORD: decodeURIComponent(url.password) }
  const conn = ['-h', url.hostname, '-p', url.port, '-U', decodeURIComponent(url.username)]
  execFileSync('psql', [...conn, '-d', url.pathname.slice(1), '-c', 'DROP DATABASE IF EXISTS pgbench', '-c', 'CREATE DATABASE pgbench'], { env, stdio: 'ignore' })
  execFileSync('pgbench', [...conn, '-i', '-s', '1', '-q', 'pgbench'], { env, stdio: 'ignore' })
  const out = execFileSync('pgbench', [...conn, '-N', '-c', String(PGBENCH_CLIENTS), '-j', '2', '-T', String(SECONDS), 'pgbench'], { env, encoding: 'utf8' })
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1])
  if (!Number.isFinite(tps)) throw new Error(`could not read pgbench's TPS from:\n${out}`)
  return tps
}

async function report(r: Record<string, any>) {
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()
  const f = (n: number, d = 1) => n.toFixed(d)
  const pass = (ok: boolean) => (ok ? 'met' : '**missed**')
  const lines: string[] = [
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC at commit \`${commit}\` on ${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}; ${SECONDS}s per measured phase. The load generator, the control plane, Postgres and Chroma share the same ${cpus().length} cores.`,
    '',
  ]
  if (r.leases) {
    const l = r.leases
    lines.push(
      '### Lease operations (acquire + release on a READY shared session)',
      '',
      `| | value |`,
      `|---|---|`,
      `| clients | ${LEASE_CLIENTS} |`,
      `| lease operations/s (acquire and release each count one) | ${f(l.opsPerSecond, 0)} (${f(l.pairsPerSecond, 0)} pairs/s) |`,
      `| acquire latency p50 / p95 / p99 | ${f(l.acquire.p50)} / ${f(l.acquire.p95)} / ${f(l.acquire.p99)} ms |`,
      `| release latency p50 / p95 / p99 | ${f(l.release.p50)} / ${f(l.release.p95)} / ${f(l.release.p99)} ms |`,
      `| pgbench -N, ${PGBENCH_CLIENTS} clients, same Postgres, same run | ${f(l.pgbenchTps, 0)} TPS |`,
      `| lease ops/s ÷ pgbench TPS | ${f(l.ratioToPgbench, 2)} (target ≥ 0.33: ${pass(l.ratioToPgbench >= 1 / 3)}) |`,
      `| at 1 client: acquire / release p50, p99 | ${f(l.unloaded.acquire.p50, 2)}, ${f(l.unloaded.acquire.p99, 2)} / ${f(l.unloaded.release.p50, 2)}, ${f(l.unloaded.release.p99, 2)} ms |`,
      `| control-plane RSS peak / mean | ${f(l.memory.peakMb)} / ${f(l.memory.meanMb)} MB (target < 200 MB: ${pass(l.memory.peakMb < 200)}) |`,
      '',
    )
  }
  if (r.proxy) {
    const p = r.proxy
    const x = p.nginx
    const col = (value: string) => (x ? ` ${value} |` : '')
    lines.push(
      `### Queries: through the proxy${x ? ' and through nginx' : ''} vs. straight to the session (${QUERY_CLIENTS} clients, 4000 × 128-dim, n_results 10)`,
      '',
      `| | direct | proxy |${col('nginx')}`,
      `|---|---|---|${col('---')}`,
      `| requests/s | ${f(p.direct.rps, 0)} | ${f(p.proxy.rps, 0)} |${x ? col(f(x.rps, 0)) : ''}`,
      `| p50 / p95 / p99 | ${f(p.direct.p50, 2)} / ${f(p.direct.p95, 2)} / ${f(p.direct.p99, 2)} ms | ${f(p.proxy.p50, 2)} / ${f(p.proxy.p95, 2)} / ${f(p.proxy.p99, 2)} ms |${x ? col(`${f(x.p50, 2)} / ${f(x.p95, 2)} / ${f(x.p99, 2)} ms`) : ''}`,
      `| 1 client, alternating: p50 / p99 | ${f(p.unloaded.direct.p50, 2)} / ${f(p.unloaded.direct.p99, 2)} ms | ${f(p.unloaded.proxy.p50, 2)} / ${f(p.unloaded.proxy.p99, 2)} ms |${x ? col(`${f(x.unloaded.p50, 2)} / ${f(x.unloaded.p99, 2)} ms`) : ''}`,
      `| added p50, 1 client / ${QUERY_CLIENTS} clients | – | ${f(p.unloaded.addedP50Ms, 2)} / ${f(p.loadedAddedP50Ms, 2)} ms |${x ? col(`${f(x.addedP50Ms, 2)} / ${f(x.loadedAddedP50Ms, 2)} ms`) : ''}`,
      `| throughput kept | – | ${f(p.throughputRatio * 100, 0)} % |${x ? col(`${f(x.throughputRatio * 100, 0)} %`) : ''}`,
      `| proxy process RSS peak | – | ${f(p.memory.peakMb, 0)} MB (the control plane) |${x ? col(`${f(x.memory?.peakMb ?? NaN, 0)} MB (one worker)`) : ''}`,
      '',
      `- Added latency at p50, 1 client: ${f(p.unloaded.addedP50Ms, 2)} ms (target ≤ 1 ms: ${pass(p.unloaded.addedP50Ms <= 1)}); at ${QUERY_CLIENTS} clients: ${f(p.loadedAddedP50Ms, 2)} ms.`,
      `- Throughput kept: ${f(p.throughputRatio * 100, 0)}% of direct (target ≥ 85%: ${pass(p.throughputRatio >= 0.85)}).`,
      x
        ? `- Beside nginx (one worker, kept-alive upstream connections, same session, same requests, same run): added p50 at 1 client ${f(p.unloaded.addedP50Ms, 2)} ms against nginx's ${f(x.addedP50Ms, 2)} ms (no worse than nginx: ${pass(p.unloaded.addedP50Ms <= x.addedP50Ms)}); throughput lost ${f((1 - p.throughputRatio) * 100, 0)} % against nginx's ${f((1 - x.throughputRatio) * 100, 0)} % (no worse than nginx: ${pass(1 - p.throughputRatio <= 1 - x.throughputRatio)}).`
        : `- nginx: not measured. ${NGINX_MISSING}.`,
      `- Control-plane RSS peak / mean: ${f(p.memory.peakMb)} / ${f(p.memory.meanMb)} MB (target < 200 MB: ${pass(p.memory.peakMb < 200)}).`,
      '',
    )
  }
  const text = lines.join('\n')
  console.log(`\n${text}`)
  const path = new URL('../BENCHMARKS.md', import.meta.url)
  const current = await readFile(path, 'utf8').catch(() => '')
  const begin = '<!-- bench:run begin -->'
  const end = '<!-- bench:run end -->'
  const section = `${begin}\n${text}\n${end}`
  const next = current.includes(begin)
    ? current.replace(new RegExp(`${begin}[\\s\\S]*?${end}`), section)
    : `${current || '# Benchmarks\n'}\n${section}\n`
  await writeFile(path, next)
}
