import type { IncomingMessage } from 'node:http'
import { Transform, type TransformCallback } from 'node:stream'

/**
 * How much of a refused body is read and thrown away before the refusal is sent. A
 * client that is still sending when the server answers and closes gets EPIPE and never
 * sees the answer (Node's fetch, http.request); one that sends more than this, or more
 * slowly, gets the answer with `Connection: close` and may miss it.
 */
export const DISCARD_MAX_BYTES = 64 * 1024 * 1024
export const DISCARD_MAX_MS = 10_000

/**
 * Reads what is left of a request's body and drops it, up to the bounds above. True
 * when the body was read to its end (the connection can carry the answer and more).
 */
export function discardRequestBody(raw: IncomingMessage, maxBytes = DISCARD_MAX_BYTES, maxMs = DISCARD_MAX_MS): Promise<boolean> {
  if (raw.complete || raw.readableEnded) return Promise.resolve(true)
  if (raw.destroyed) return Promise.resolve(false)
  if (Number(raw.headers['content-length']) > maxBytes) return Promise.resolve(false)
  return new Promise((resolve) => {
    let bytes = 0
    const finish = (done: boolean) => {
      clearTimeout(timer)
      raw.off('data', onData).off('end', onEnd).off('error', onFail).off('close', onClose)
      resolve(done)
    }
    const onData = (chunk: Buffer) => {
      bytes += chunk.length
      if (bytes > maxBytes) finish(false)
    }
    const onEnd = () => finish(true)
    const onFail = () => finish(false)
    const onClose = () => finish(raw.complete)
    const timer = setTimeout(() => finish(false), maxMs)
    raw.on('data', onData).once('end', onEnd).once('error', onFail).once('close', onClose)
    raw.resume()
  })
}

/**
 * Passes a streamed body through, counting it: past `limit` bytes it fails, so a body
 * sent without Content-Length (chunked) is held to the same limit as one sent with it.
 * Given its `source`, it reads nothing of it until `start()`: a request that waits
 * before it is forwarded leaves its body on the socket (TCP flow control holds the rest).
 */
export class BodyLimit extends Transform {
  bytes = 0
  exceeded = false
  constructor(
    readonly limit: number,
    private source?: NodeJS.ReadableStream,
  ) {
    super()
  }

  /** Starts reading the source through this stream (once). */
  start(): this {
    this.source?.pipe(this)
    this.source = undefined
    return this
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
    this.bytes += chunk.length
    if (this.bytes > this.limit) {
      this.exceeded = true
      return callback(new Error(`the body exceeds ${this.limit} bytes`))
    }
    callback(null, chunk)
  }
}
