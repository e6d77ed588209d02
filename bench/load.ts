import { readFile } from 'node:fs/promises'
import { Pool } from 'undici'

/** Latency samples in milliseconds, with the percentiles the benchmarks report. */
export class Latencies {
  private readonly samples: number[] = []
  add(ms: number) {
    this.samples.push(ms)
  }
  reset() {
    this.samples.length = 0
  }
  get count() {
    return this.samples.length
  }
  percentile(p: number): number {
    const sorted = [...this.samples].sort((a, b) => a - b)
    if (sorted.length === 0) return NaN
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
  }
  summary() {
    return { count: this.count, p50: this.percentile(50), p95: this.percentile(95), p99: this.percentile(99) }
  }
}

/**
 * A closed-loop load: `clients` concurrent loops, each running `iteration` back to back
 * until `seconds` have passed (bounded in time and count, loopback only).
 */
export async function closedLoop(clients: number, seconds: number, iteration: (client: number) => Promise<void>, maxIterations = 5_000_000) {
  const deadline = performance.now() + seconds * 1000
  let done = 0
  const started = performance.now()
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      while (performance.now() < deadline && done < maxIterations) {
        await iteration(c)
        done++
      }
    }),
  )
  return { iterations: done, seconds: (performance.now() - started) / 1000 }
}

/** One timed HTTP request; throws on a status other than `expect`. */
export async function timed(pool: Pool, latencies: Latencies, opts: Parameters<Pool['request']>[0], expect: number) {
  const t = performance.now()
  const res = await pool.request(opts)
  const body = await res.body.text()
  latencies.add(performance.now() - t)
  if (res.statusCode !== expect) throw new Error(`${opts.method} ${opts.path} answered ${res.statusCode}: ${body.slice(0, 300)}`)
  return body
}

/** One timed call (an operation of @chroma-lease/client); its result, or its error. */
export async function timedCall<T>(latencies: Latencies, call: () => Promise<T>): Promise<T> {
  const t = performance.now()
  const result = await call()
  latencies.add(performance.now() - t)
  return result
}

/** Samples a process's resident set size (VmRSS, MB) until stopped; returns the peak. */
export function sampleRss(pid: number, everyMs = 200) {
  let peak = 0
  const samples: number[] = []
  const read = async () => {
    try {
      const status = await readFile(`/proc/${pid}/status`, 'utf8')
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
      samples.push(kb / 1024)
      peak = Math.max(peak, kb / 1024)
    } catch {
      // the process is gone
    }
  }
  const timer = setInterval(read, everyMs)
  return {
    stop: async () => {
      clearInterval(timer)
      await read()
      return { peakMb: peak, meanMb: samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length) }
    },
  }
}
