import type { Logger } from 'pino'
import type { PassClaim } from '../database/worker-pass-claim.ts'

export interface WorkerLoopOptions {
  /** One pass per interval for the whole fleet: a scheduled pass runs only once claimed (WorkerPassClaim). */
  claim?: PassClaim
  /** Told of every scheduled pass: its duration, or that another replica had it. */
  onPass?: (outcome: { seconds: number } | 'skipped') => void
}

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
    private readonly opts: WorkerLoopOptions = {},
  ) {}

  start(): this {
    this.schedule(0)
    return this
  }

  /** Runs one pass now (or waits for the one in progress), claimed or not. */
  runNow(): Promise<void> {
    return this.run(false)
  }

  /** What the timer does: a pass, if this replica claims it (always, without a claim). Answers whether it ran. */
  async tick(): Promise<boolean> {
    let ran = false
    await this.run(true, () => (ran = true))
    return ran
  }

  private run(claimed: boolean, ran?: () => void): Promise<void> {
    if (this.running) return this.running
    const claim = claimed ? this.opts.claim : undefined
    this.running = (async () => {
      if (claim && !(await claim.take())) {
        this.opts.onPass?.('skipped')
        return
      }
      ran?.()
      const started = performance.now()
      try {
        await this.pass()
      } finally {
        this.opts.onPass?.({ seconds: (performance.now() - started) / 1000 })
        await claim?.done()
      }
    })()
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
      this.tick().finally(() => this.schedule(this.intervalMs))
    }, delay)
    this.timer.unref()
  }
}
