/**
 * The dead man's switch: fires once when `confirm()` has not been called for
 * `timeoutMs`. The control plane confirms every session it still knows about from its
 * agent confirmer (never per proxied request), so a control plane that is gone for good,
 * or one that forgot the session, cannot leave it running and billing.
 */
export class DeadMansSwitch {
  private timer: NodeJS.Timeout | undefined
  private confirmedAt = Date.now()

  constructor(
    readonly timeoutMs: number,
    private readonly onFire: (silentForMs: number) => void,
  ) {}

  /** Starts (or restarts) the countdown: launching the session counts as the first confirmation. */
  confirm(): void {
    this.confirmedAt = Date.now()
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.onFire(Date.now() - this.confirmedAt)
    }, this.timeoutMs)
    this.timer.unref()
  }

  get lastConfirmedAt(): Date {
    return new Date(this.confirmedAt)
  }

  disarm(): void {
    clearTimeout(this.timer)
    this.timer = undefined
  }
}
