import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

/** The script that runs the Rust Chroma server in a process of its own. */
export const CHROMA_SERVER_SCRIPT = fileURLToPath(new URL('./chroma-server.cjs', import.meta.url))

export interface ChromaExit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface ChromaServerOptions {
  dataDir: string
  host: string
  port: number
  /** Where the server's stdout goes; its stderr is always piped so that failures can quote it. */
  stdout?: 'inherit' | 'ignore'
  /** Called with every chunk of the server's stderr (the agent forwards it to its own log). */
  onStderr?: (chunk: Buffer) => void
}

const STDERR_TAIL_BYTES = 8 * 1024

/**
 * One Chroma server child process: started by `start`, observed through `exited`,
 * stopped gracefully by `stop`.
 */
export class ChromaServer {
  readonly exited: Promise<ChromaExit>
  private stderrTail = ''

  private constructor(
    private readonly child: ChildProcess,
    /** `http://host:port`, the base of Chroma's HTTP API. */
    readonly url: string,
  ) {
    // "close", not "exit": stderr is fully read by then, so failures can quote all of it.
    this.exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })))
  }

  static start(options: ChromaServerOptions): ChromaServer {
    const args = ['--path', options.dataDir, '--host', options.host, '--port', String(options.port)]
    const child = spawn(process.execPath, [CHROMA_SERVER_SCRIPT, ...args], {
      stdio: ['ignore', options.stdout ?? 'inherit', 'pipe'],
      // A panic's backtrace would push the one useful line (the panic message) out of
      // the stderr tail that failures quote.
      env: { ...process.env, RUST_BACKTRACE: '0' },
    })
    const server = new ChromaServer(child, localUrl(options.host, options.port))
    child.stderr?.on('data', (chunk: Buffer) => {
      server.stderrTail = (server.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES)
      options.onStderr?.(chunk)
    })
    return server
  }

  get pid(): number | undefined {
    return this.child.pid
  }

  get hasExited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null
  }

  /** The last non-empty lines Chroma wrote to stderr, for failure reports. */
  lastStderrLines(count = 5): string[] {
    return this.stderrTail
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && !line.startsWith('note: run with `RUST_BACKTRACE'))
      .slice(-count)
  }

  /**
   * Resolves once `GET /api/v2/heartbeat` answers 200. Rejects if the server exits
   * first or does not answer within `timeoutMs`.
   */
  async waitForHeartbeat(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let exited: ChromaExit | null = null
    void this.exited.then((e) => (exited = e))
    while (Date.now() < deadline) {
      signal?.throwIfAborted()
      if (exited) throw new Error(`chroma exited before answering its heartbeat (${describeExit(exited)})`)
      if (await this.heartbeatAnswers()) return
      // Every poll is a refused loopback connect until it listens: cheap, and the session's start waits on it.
      await sleep(25)
    }
    throw new Error(`chroma did not answer GET /api/v2/heartbeat within ${timeoutMs} ms`)
  }

  /**
   * SIGINT, then SIGKILL if it has not exited after `timeoutMs`. Safe to call when
   * the server has already exited.
   */
  async stop(timeoutMs: number): Promise<ChromaExit> {
    if (!this.hasExited) {
      this.child.kill('SIGINT')
      const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
      await this.exited
      clearTimeout(timer)
    }
    return this.exited
  }

  private async heartbeatAnswers(): Promise<boolean> {
    try {
      const res = await fetch(`${this.url}/api/v2/heartbeat`, { signal: AbortSignal.timeout(1_000) })
      await res.body?.cancel()
      return res.ok
    } catch {
      return false // not listening yet
    }
  }
}

/** The URL that reaches a server bound to `host` from this machine. */
function localUrl(host: string, port: number): string {
  // A wildcard bind (Fargate listens on all interfaces) is reached through loopback.
  if (host === '0.0.0.0') return `http://127.0.0.1:${port}`
  if (host === '::') return `http://[::1]:${port}`
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
}

export function describeExit(exit: ChromaExit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`
}
