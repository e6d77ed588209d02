import { Transform, type Readable } from 'node:stream'

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

  /**
   * Counts what `source` emits without a stage of its own in the pipeline (one stream
   * hop less per chunk). Call it in the same tick as the pipeline that reads `source`.
   */
  watch<T extends Readable>(source: T): T {
    source.on('data', (chunk: Buffer) => {
      this.bytes += chunk.length
      this.listener(this.bytes, this.totalBytes)
    })
    return source
  }

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
