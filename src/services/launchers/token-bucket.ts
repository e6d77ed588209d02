import { setTimeout as sleep } from 'node:timers/promises'

/** Spaces calls to a rate-limited API: take() resolves when the next call may go. */
export interface RateLimiter {
  take(): Promise<void>
}

/**
 * Spaces calls to a rate-limited API: up to `burst` at once, then `ratePerSecond`.
 * Callers queue (in order) rather than fail, so a herd of cold acquires for many
 * snapshots becomes a steady stream of RunTask calls that ECS accepts.
 */
export class TokenBucket implements RateLimiter {
  // In this process only; SharedTokenBucket (src/database) is the one replicas share.
  private tokens: number
  private last = performance.now()
  private queue: Promise<void> = Promise.resolve()

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {
    this.tokens = burst
  }

  take(): Promise<void> {
    const turn = this.queue.then(() => this.waitForToken())
    this.queue = turn
    return turn
  }

  private async waitForToken(): Promise<void> {
    for (;;) {
      const now = performance.now()
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.ratePerSecond)
      this.last = now
      if (this.tokens >= 1) {
        this.tokens -= 1
        return
      }
      await sleep(Math.ceil(((1 - this.tokens) / this.ratePerSecond) * 1000))
    }
  }
}
