import { Transform } from 'node:stream'

export type ProgressListener = (bytes: number, totalBytes: number | undefined) => void

/**
 * Counts the snapshot bytes a restore has read, across any number of streams (a
 * prefix restore downloads several objects at once), and reports the running total.
 */
export class ProgressMeter {
  private bytes = 0

  constructor(
    readonly totalBytes: number | undefined,
    private readonly listener: ProgressListener,
  ) {}

  /** A pass-through stream that adds every chunk flowing through it to the count. */
  tap(): Transform {
    return new Transform({
      transform: (chunk: Buffer, _encoding, done) => {
        this.bytes += chunk.length
        this.listener(this.bytes, this.totalBytes)
        done(null, chunk)
      },
    })
  }
}
