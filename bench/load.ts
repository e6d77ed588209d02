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

/**
 * An open-loop load: request i is due at start + i / rate, whether or not earlier ones have
 * answered, and its latency runs from that intended time, not from when it was sent. A stall
 * therefore shows in the latency of every request that should have gone out during it
 * (no coordinated omission). Bounded in time (`seconds`) and in requests in flight
 * (`maxInFlight`: past it, due requests wait, and their wait counts).
 * `request` gets its index and intended time (performance.now() scale), to time parts of itself alike.
 * Answers how many were due, completed and failed, and the rate achieved.
 */
export async function openLoop(ratePerSecond: number, seconds: number, request: (i: number, intendedAt: number) => Promise<void>, latencies: Latencies, maxInFlight = 1000) {
  const total = Math.floor(ratePerSecond * seconds)
  const started = performance.now()
  let sent = 0
  let completed = 0
  let failed = 0
  let inFlight = 0
  let firstError: unknown
  const settled: Promise<void>[] = []
  while (sent < total) {
    const now = performance.now()
    while (sent < total && inFlight < maxInFlight && started + (sent * 1000) / ratePerSecond <= now) {
      const intended = started + (sent * 1000) / ratePerSecond
      const i = sent++
      inFlight++
      settled.push(
        request(i, intended).then(
          () => {
            completed++
            latencies.add(performance.now() - intended)
          },
          (err) => {
            failed++
            firstError ??= err
          },
        ).finally(() => inFlight--),
      )
    }
    // Sleep to the next due time (timers fire at ~1 ms granularity; lateness is measured, not hidden).
    const next = started + (sent * 1000) / ratePerSecond - performance.now()
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(next, 5))))
  }
  await Promise.all(settled)
  const elapsed = (performance.now() - started) / 1000
  return { due: total, completed, failed, firstError, achievedPerSecond: completed / elapsed, seconds: elapsed }
}

/**
 * A process's CPU time so far (user + system, seconds), from /proc; with `exitedChildren`,
 * also that of its children that have exited and been waited for (a postmaster's backends).
 */
export async function cpuSeconds(pid: number, exitedChildren = false): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number)
    // utime, stime (and cutime, cstime) in clock ticks, 100 a second on Linux.
    return (fields[11]! + fields[12]! + (exitedChildren ? fields[13]! + fields[14]! : 0)) / 100
  } catch {
    return 0
  }
}

/** A process and its direct children (a postmaster and its backends), by pid. */
export async function withChildren(pid: number): Promise<number[]> {
  const { readdir } = await import('node:fs/promises')
  const pids = [pid]
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '')
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    if (ppid === pid) pids.push(Number(entry))
  }
  return pids
}
