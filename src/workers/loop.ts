import type { Logger } from 'pino'

/**
 * Runs a worker pass every `intervalMs`, one pass at a time, forever, until stopped.
 * A failing pass is logged and the next one runs on schedule: every worker pass reads
 * the state afresh, so there is nothing to recover.
 */
export class WorkerLoop {
  private timer: NodeJS.Timeout | null = null
  private running: Promise<void> | null = null
  private stopped = false

  constructor(
    readonly name: string,
    private readonly intervalMs: number,
    private readonly pass: () => Promise<unknown>,
    private readonly logger?: Logger,
  ) {}

  start(): this {
    this.schedule(0)
    return this
  }

  /** Runs one pass now (or waits for the one in progress). */
  runNow(): Promise<void> {
    if (this.running) return this.running
    this.running = this.pass()
      .then(
        () => {},
        (err) => this.logger?.error({ err, worker: this.name }, 'worker pass failed'),
      )
      .finally(() => {
        this.running = null
      })
    return this.running
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    await this.running
  }

  private schedule(delay: number) {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.runNow().finally(() => this.schedule(this.intervalMs))
    }, delay)
    this.timer.unref()
  }
}
