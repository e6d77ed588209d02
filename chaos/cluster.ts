import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { type EmbeddedDatabase } from '../src/database/embedded-postgres.ts'
import { startOnPort } from '../test/helpers/dedicated-postgres.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { projectPath } from '../src/paths.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * The chaos run's own Postgres cluster (embedded, as in test/helpers/dedicated-postgres.ts),
 * restarted the hard way: SIGQUIT to the postmaster is Postgres's immediate shutdown
 * (no checkpoint, every backend dies at once, crash recovery on the next start).
 */
export class ChaosPostgres {
  private db: EmbeddedDatabase | null = null
  port = 0
  url = ''

  constructor(private readonly dir: string) {}

  async start(): Promise<void> {
    this.port = await freeLoopbackPort()
    this.db = await startOnPort(this.dir, this.port)
    this.url = this.db.url
  }

  /** Immediate shutdown, then a start on the same port; resolves once it accepts connections again. */
  async restartImmediately(): Promise<void> {
    await this.db?.stop('immediate')
    this.db = await startOnPort(this.dir, this.port)
  }

  async stop(): Promise<void> {
    await this.db?.stop().catch(() => {})
    this.db = null
  }
}

export interface ReplicaOptions {
  index: number
  port: number
  env: Record<string, string>
  logDir: string
}

/**
 * One control-plane replica: the real server entry (src/server.ts through tsx) as a
 * child process of its own, so kill -9 and SIGSTOP are real.
 */
export class Replica {
  child: ChildProcess | null = null
  /** Set while the runner has it stopped or killed on purpose. */
  down = false
  starts = 0
  /** Exits the runner did not cause (a crash of the control plane), outside its own start-up. */
  readonly crashes: Array<{ at: number; code: number | null; signal: string | null }> = []
  private expectingExit = true
  readonly url: string
  readonly name: string

  constructor(private readonly options: ReplicaOptions) {
    this.url = `http://127.0.0.1:${options.port}`
    this.name = `replica-${options.index}`
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  /** Spawns the server and waits until /readyz answers 200 (respawning if it exits, e.g. while Postgres is away). */
  async start(deadlineMs = 90_000): Promise<void> {
    const deadline = Date.now() + deadlineMs
    while (Date.now() < deadline) {
      this.spawn()
      const child = this.child!
      while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
        if (await this.ready()) {
          this.expectingExit = false
          return
        }
        await sleep(200)
      }
      if (child.exitCode === null && child.signalCode === null) break
      await sleep(500)
    }
    throw new Error(`${this.name} did not become ready within ${deadlineMs} ms (see ${this.logPath})`)
  }

  get logPath(): string {
    return join(this.options.logDir, `${this.name}.log`)
  }

  private spawn(): void {
    this.starts++
    const log = openSync(this.logPath, 'a')
    this.child = spawn(process.execPath, ['--conditions=chroma-lease-source', '--import', 'tsx', projectPath('src', 'server.ts')], {
      cwd: projectPath(),
      env: { ...process.env, ...this.options.env, PORT: String(this.options.port), HOST: '127.0.0.1' },
      stdio: ['ignore', log, log],
    })
    closeSync(log) // the child has its own copy
    this.child.on('error', () => {})
    this.child.on('exit', (code, signal) => {
      if (!this.expectingExit) this.crashes.push({ at: Date.now(), code, signal })
    })
  }

  async ready(): Promise<boolean> {
    try {
      const res = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(1_000) })
      await res.body?.cancel()
      return res.status === 200
    } catch {
      return false
    }
  }

  /** True when the process has exited. */
  get exited(): boolean {
    return !this.child || this.child.exitCode !== null || this.child.signalCode !== null
  }

  async kill(): Promise<void> {
    this.expectingExit = true
    const child = this.child
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  }

  signal(sig: 'SIGSTOP' | 'SIGCONT'): void {
    if (this.child?.pid) process.kill(this.child.pid, sig)
  }

  /** A graceful stop (SIGTERM), as at the end of a run. */
  async stop(): Promise<void> {
    this.expectingExit = true
    const child = this.child
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGCONT')
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 35_000)
    await exited
    clearTimeout(timer)
  }
}

