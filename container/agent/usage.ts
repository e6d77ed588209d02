import { readFileSync } from 'node:fs'

/** What the session uses right now: the agent and its Chroma server together. */
export interface SessionUsage {
  /** Resident memory (RSS) of both processes. */
  memoryBytes: number
  /** CPU time both processes have used (user + system), since they started. */
  cpuSeconds: number
  /** CPU cores used on average since the previous reading (1 = one core busy). */
  cpuCores: number
}

// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ) on every architecture
// Fargate and this repository run on.
const TICKS_PER_SECOND = 100

/**
 * Reads the session's memory and CPU from Node's own counters and, for Chroma, from
 * /proc. The control plane asks for it with each dead man's switch confirmation (about
 * once a minute), so `cpuCores` averages over that minute; on Fargate this is the only
 * view of a session's load the control plane has without CloudWatch.
 */
export class UsageMeter {
  private last = { cpuSeconds: 0, at: process.hrtime.bigint() - BigInt(Math.round(process.uptime() * 1e9)) }
  /** Chroma's CPU time when it was last seen, so a Chroma restart (after a save) does not count as negative. */
  private chroma = { pid: 0, cpuSeconds: 0, earlier: 0 }

  read(chromaPid: number | undefined): SessionUsage {
    const own = process.cpuUsage()
    const chroma = chromaPid ? procUsage(chromaPid) : null
    if (chroma && chromaPid !== this.chroma.pid) this.chroma = { pid: chromaPid!, cpuSeconds: 0, earlier: this.chroma.earlier + this.chroma.cpuSeconds }
    if (chroma) this.chroma.cpuSeconds = chroma.cpuSeconds
    const cpuSeconds = (own.user + own.system) / 1e6 + this.chroma.earlier + this.chroma.cpuSeconds
    const at = process.hrtime.bigint()
    const elapsed = Number(at - this.last.at) / 1e9
    const cpuCores = elapsed > 0 ? Math.max(0, cpuSeconds - this.last.cpuSeconds) / elapsed : 0
    this.last = { cpuSeconds, at }
    return { memoryBytes: process.memoryUsage.rss() + (chroma?.memoryBytes ?? 0), cpuSeconds: round(cpuSeconds), cpuCores: round(cpuCores) }
  }
}

/** A process's RSS and CPU time from /proc; null when it is gone (or this is not Linux). */
export function procUsage(pid: number): { memoryBytes: number; cpuSeconds: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rssKb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0)
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const ticks = Number(fields[11]) + Number(fields[12])
    return { memoryBytes: rssKb * 1024, cpuSeconds: ticks / TICKS_PER_SECOND }
  } catch {
    return null
  }
}

const round = (n: number) => Math.round(n * 1000) / 1000
