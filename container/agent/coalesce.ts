import { Transform } from 'node:stream'

/**
 * Joins small chunks into ones of at least `bytes` (the last may be smaller), bytes
 * unchanged. Sockets and pipes deliver 16–64 KiB at a time, and node-tar writes each
 * chunk it is given as its own fs write through the thread pool: joining them into
 * 1 MiB brought the restore of bench/restore.ts's archives from 1.41x to 1.14x (.tar)
 * and 1.48x to 1.11x (.tar.zst) of tar -x (BENCHMARKS.md, Restore runs). Holds at most
 * one joined chunk (plus the stream's own buffer).
 */
export function coalesce(bytes: number): Transform {
  let parts: Buffer[] = []
  let held = 0
  const joined = () => {
    const chunk = parts.length === 1 ? parts[0]! : Buffer.concat(parts, held)
    parts = []
    held = 0
    return chunk
  }
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      parts.push(chunk)
      held += chunk.length
      done(null, held >= bytes ? joined() : undefined)
    },
    flush(done) {
      done(null, held > 0 ? joined() : undefined)
    },
  })
}
