import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freeLoopbackPort } from '../src/free-port.ts'
import { npmStartNodeArgs } from '../test/helpers/npm-start.ts'

/** The control plane as `npm start` runs it, in a process of its own so its RSS is its own. */
export interface RunningControlPlane {
  url: string
  pid: number
  /** The embedded Postgres it started (for pgbench on the same server). */
  databaseUrl: string
  /** The embedded Postgres's postmaster, when this one started it (its CPU is Postgres's). */
  postmasterPid?: number
  stop(): Promise<void>
}

/** Checkouts whose bundle this run has built. */
const built = new Set<string>()

/**
 * `cwd`: another checkout of the service (a baseline) whose bundle to run; this one by default.
 * `nodeFlags`: given to node after `npm start`'s own flags (so they override them: --heap-growing-percent=0 is V8's
 * default) and before the bundle (V8 heap flags that NODE_OPTIONS refuses, e.g. --optimize-for-size).
 */
export async function startControlPlane(dataDir: string, env: Record<string, string>, cwd = process.cwd(), nodeFlags: string[] = []): Promise<RunningControlPlane> {
  const port = await freeLoopbackPort()
  // BENCH_NODE_FLAGS="--heap-growing-percent=0" adds node flags for every control plane a bench starts (an A/B of npm start's own).
  nodeFlags = [...(process.env.BENCH_NODE_FLAGS?.split(' ').filter(Boolean) ?? []), ...nodeFlags]
  // BENCH_CPU_PROFILE_DIR=dir writes a V8 CPU profile of the control plane there (open it in Chrome DevTools).
  const profile = process.env.BENCH_CPU_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROFILE_DIR}`] : []
  // As `npm start` runs it: the esbuild bundle under plain Node (built once per bench run), with its node flags.
  if (!built.has(cwd)) execFileSync(process.execPath, ['scripts/build.mjs'], { cwd })
  built.add(cwd)
  const start = npmStartNodeArgs(cwd)
  const child: ChildProcess = spawn(process.execPath, [...profile, ...start.slice(0, -1), ...nodeFlags, ...start.slice(-1)], {
    cwd,
    env: { ...process.env, DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`the control plane exited with ${child.exitCode}`)
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false)
    if (ok) break
    if (i > 600) throw new Error('the control plane did not become ready in 60 s')
    await sleep(100)
  }
  // A replica given DATABASE_URL shares that Postgres; otherwise it started its own embedded one.
  const pidFile = env.DATABASE_URL ? [] : (await readFile(join(dataDir, 'postgres', 'postmaster.pid'), 'utf8')).split('\n')
  return {
    url,
    pid: child.pid!,
    databaseUrl: env.DATABASE_URL ?? `postgresql://chroma_lease:chroma_lease@127.0.0.1:${pidFile[3]}/chroma_lease`,
    postmasterPid: env.DATABASE_URL ? undefined : Number(pidFile[0]),
    async stop() {
      if (child.exitCode !== null) return
      child.kill('SIGTERM')
      await once(child, 'exit')
    },
  }
}
