import { Prisma } from '../generated/prisma/client.ts'

/**
 * What a session's compute costs at Fargate prices. Pure functions: prices come from
 * configuration (FARGATE_* variables), sizes and times from the session's own record;
 * the same per-session formula as SQL too, for sums in the database (sessionCostSql).
 *
 * Fargate bills per second from the start of the image pull to the end of the task,
 * with a one-minute minimum, per vCPU-hour and per GB-hour of memory, and ARM (Graviton)
 * costs less than x86. We approximate the billed span by the session's launch claim
 * (launched_at) to its end (ended_at, or now while it runs): the claim comes a moment
 * before RunTask, and a stopped session ends on the first reconcile pass that sees its
 * task STOPPED, so the figure is close rather than exact. FARGATE_SPOT is charged at the
 * on-demand prices here (Spot prices move with the market): an upper bound.
 *
 * A session claimed from the warm pool is billed from its claim (claimed_at): what its
 * task ran before that, with the task's one-minute minimum, is the pool's idle cost
 * (warmIdleCostSql), a line of its own in GET /v1/costs and GET /v1/warm-pool.
 */
export interface FargatePrices {
  x86: { vcpuHour: number; gbHour: number }
  arm: { vcpuHour: number; gbHour: number }
  /** Billing has a minimum duration per task, in seconds. */
  minimumSeconds: number
}

/** us-east-1 on-demand Linux prices. */
export const DEFAULT_FARGATE_PRICES: FargatePrices = {
  x86: { vcpuHour: 0.04048, gbHour: 0.004445 },
  arm: { vcpuHour: 0.03238, gbHour: 0.00356 },
  minimumSeconds: 60,
}

export interface ComputeSize {
  cpuUnits: number
  memoryMiB: number
  /** x86_64 or arm64; anything else (unknown) is priced as x86, the dearer. */
  architecture: string
}

/** Dollars per hour for a task of this size. */
export function hourlyPrice(size: ComputeSize, prices: FargatePrices): number {
  const p = size.architecture === 'arm64' ? prices.arm : prices.x86
  return (size.cpuUnits / 1024) * p.vcpuHour + (size.memoryMiB / 1024) * p.gbHour
}

/** Dollars for running a task of this size for `seconds` (per-second, with the minimum). */
export function runCost(size: ComputeSize, seconds: number, prices: FargatePrices): number {
  const billed = Math.max(prices.minimumSeconds, Math.ceil(Math.max(0, seconds)))
  return (hourlyPrice(size, prices) * billed) / 3600
}

export interface SessionCostInput {
  cpuUnits: number | null
  memoryMiB: number | null
  cpuArchitecture: string | null
  capacityProvider: string | null
  launchedAt: Date | null
  /** Claimed from the warm pool: billed from here, with no minimum (the task's minimum is the pool's). */
  claimedAt?: Date | null
  endedAt: Date | null
}

export interface SessionCost {
  vcpu: number
  memoryGb: number
  architecture: string
  capacityProvider: string | null
  runSeconds: number
  hourlyUsd: number
  costUsd: number
}

/** The session's size, run time and cost so far; null when its launcher reported no size. */
export function sessionCost(s: SessionCostInput, prices: FargatePrices, now: Date): SessionCost | null {
  if (s.cpuUnits === null || s.memoryMiB === null || s.launchedAt === null) return null
  const size = { cpuUnits: s.cpuUnits, memoryMiB: s.memoryMiB, architecture: s.cpuArchitecture ?? 'x86_64' }
  const from = s.claimedAt ?? s.launchedAt
  const runSeconds = Math.max(0, ((s.endedAt ?? now).getTime() - from.getTime()) / 1000)
  const billing = s.claimedAt ? { ...prices, minimumSeconds: 0 } : prices
  return {
    vcpu: s.cpuUnits / 1024,
    memoryGb: s.memoryMiB / 1024,
    architecture: size.architecture,
    capacityProvider: s.capacityProvider,
    runSeconds: Math.round(runSeconds),
    hourlyUsd: round(hourlyPrice(size, prices), 6),
    costUsd: round(runCost(size, runSeconds, billing), 6),
  }
}

/**
 * A session's cost so far in SQL, the same formula as sessionCost() above (per second,
 * the minimum, ARM or x86 prices), for `s`, a row of sessions: NULL without a size or a
 * launch, as sessionCost() is null (greatest() would otherwise bill the minimum for it).
 * test/costs.test.ts checks the two agree.
 */
export function sessionCostSql(prices: FargatePrices, now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`(CASE WHEN s.launched_at IS NULL THEN NULL ELSE
    greatest(CASE WHEN s.claimed_at IS NULL THEN ${prices.minimumSeconds} ELSE 0 END::float8,
             ceil(greatest(0, extract(epoch FROM coalesce(s.ended_at, ${now}) - coalesce(s.claimed_at, s.launched_at)))::float8))
    * ${hourlyPriceSql(prices)} / 3600 END)::float8`
}

/**
 * What a session row `s` started ahead of demand (a warm agent, a pin's standby) cost
 * before an acquire claimed it, or until it ended unclaimed: idle cost, with the task's
 * minimum. NULL without a size or a launch.
 */
export function idleBeforeClaimCostSql(prices: FargatePrices, now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`(CASE WHEN s.launched_at IS NULL THEN NULL ELSE
    greatest(${prices.minimumSeconds}::float8, ceil(greatest(0, extract(epoch FROM coalesce(s.claimed_at, s.ended_at, ${now}) - s.launched_at))::float8))
    * ${hourlyPriceSql(prices)} / 3600 END)::float8`
}

/** Dollars per hour of the session row `s`'s size (NULL without one). */
function hourlyPriceSql(prices: FargatePrices): Prisma.Sql {
  const arm = Prisma.sql`s.cpu_architecture = 'arm64'`
  return Prisma.sql`(s.cpu_units / 1024.0 * CASE WHEN ${arm} THEN ${prices.arm.vcpuHour}::float8 ELSE ${prices.x86.vcpuHour}::float8 END
       + s.memory_mib / 1024.0 * CASE WHEN ${arm} THEN ${prices.arm.gbHour}::float8 ELSE ${prices.x86.gbHour}::float8 END)`
}

/**
 * The original design's comparison: one task of this size running 24/7 for a month
 * against on-demand sessions, given how many seconds each session ran (each billed
 * separately, with the minimum).
 */
export function alwaysOnVersusOnDemand(size: ComputeSize, sessionSeconds: number[], prices: FargatePrices, hoursPerMonth = 730) {
  const alwaysOnUsd = hourlyPrice(size, prices) * hoursPerMonth
  const onDemandUsd = sessionSeconds.reduce((sum, s) => sum + runCost(size, s, prices), 0)
  return { alwaysOnUsd: round(alwaysOnUsd, 2), onDemandUsd: round(onDemandUsd, 4) }
}

const round = (n: number, digits: number) => Math.round(n * 10 ** digits) / 10 ** digits
