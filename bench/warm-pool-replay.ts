/**
 * A replayed day of acquires against the warm pool's sizing policy: a discrete-event
 * simulation in simulated time of the POLICY (src/services/warm-pool.ts: warmPoolTarget,
 * the demand window, the refill median, the pass's launch / shrink / recycle steps), not
 * of the control plane. No database, no launcher: agents are numbers with timestamps.
 *
 * What it mirrors of WarmPoolService.refill() and the claim (LeaseService):
 * - a pass every WARM_POOL_PASS_SECONDS (the worker's loop, 5 s): recycle READY agents
 *   past maxAgeSeconds, launch min(MAX_REFILLS_PER_PASS, target - live) where live counts
 *   pending, starting and ready agents, stop the oldest-ready READY agents beyond target;
 * - demand = acquires that needed a new session (claims and cold launches), at the higher
 *   rate of the last DEMAND_WINDOW_SECONDS and DEMAND_LONG_WINDOW_SECONDS; refillSeconds = the median launch-to-running time of agents
 *   seen running over the last hour, DEFAULT 60 s before any;
 * - an acquire claims the oldest-ready READY agent (a hit) or launches cold (a miss);
 * - hints (POST /v1/warm-pool/hints): while a hint is active the target is the demand's
 *   plus hinted = max(0, the active hints' counts - warm claims since the earliest of them),
 *   within min..max.
 */
import { demandRate, DEMAND_LONG_WINDOW_SECONDS, DEMAND_WINDOW_SECONDS, MAX_REFILLS_PER_PASS, WARM_POOL_PASS_SECONDS, warmPoolTarget, type WarmPoolDemand } from '../src/services/warm-pool.ts'
import { Rng } from '../chaos/rng.ts'

export { WARM_POOL_PASS_SECONDS }
const DEFAULT_REFILL_SECONDS = 60
const DAY = 86_400

/** Deterministic (the chaos suite's mulberry32): the same seed gives the same day. */
export function seededRandom(seed: number): () => number {
  const rng = new Rng(seed)
  return () => rng.next()
}

export interface Arrival {
  at: number
  /** How long the session is held once READY (s). */
  durationS: number
  /** Part of a burst (not of the hourly Poisson base). */
  burst: boolean
}

export interface DayWorkload {
  arrivals: Arrival[]
  /** Launch to running of each Fargate task, drawn per launch (s). */
  refillS: () => number
  /** Acquires per hour of the day (before bursts). */
  hourlyRate: number[]
  bursts: Array<{ at: number; count: number; spreadS: number }>
}

/**
 * One day: a Poisson base rate that varies by hour (a working day's shape), plus a few
 * bursts (a Step Functions Map state fanning out: `count` acquires within `spreadS`);
 * rateFactor multiplies the base rate (not the bursts);
 * session holds lognormal (median 10 min); Fargate starts 45 s plus an exponential tail
 * (mean 15 s), about a minute as REALISTIC_STATUS_MS has it.
 */
export function generateDay(seed: number, rateFactor = 1): DayWorkload {
  return generate(seed, [3, 2, 2, 2, 3, 5, 10, 20, 35, 45, 45, 40, 35, 40, 45, 45, 40, 30, 20, 12, 8, 6, 4, 3].map((r) => r * rateFactor), 4)
}

/** A day at one constant Poisson rate and no bursts: what the policy does where its model holds. */
export function generateSteadyDay(seed: number, perHour: number): DayWorkload {
  return generate(seed, Array.from({ length: 24 }, () => perHour), 0)
}

function generate(seed: number, hourlyRate: number[], burstCount: number): DayWorkload {
  const random = seededRandom(seed)
  const exponential = (mean: number) => -Math.log(1 - random()) * mean
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
  const duration = () => Math.min(4 * 3600, 600 * Math.exp(1.0 * normal()))
  const arrivals: Arrival[] = []
  for (let h = 0; h < 24; h++) {
    for (let t = h * 3600 + exponential(3600 / hourlyRate[h]!); t < (h + 1) * 3600; t += exponential(3600 / hourlyRate[h]!)) {
      arrivals.push({ at: t, durationS: duration(), burst: false })
    }
  }
  const bursts = Array.from({ length: burstCount }, () => ({ at: Math.round((8 + random() * 10) * 3600), count: 15 + Math.floor(random() * 20), spreadS: 120 }))
  for (const b of bursts) {
    for (let i = 0; i < b.count; i++) arrivals.push({ at: b.at + random() * b.spreadS, durationS: duration(), burst: true })
  }
  arrivals.sort((a, b) => a.at - b.at)
  // Its own stream, so the launches' draws do not shift with the arrivals.
  const refillRandom = seededRandom(seed ^ 0x5eed)
  const refillS = () => 45 + -Math.log(1 - refillRandom()) * 15
  return { arrivals, refillS, hourlyRate, bursts }
}

/** What a pass knows when it sizes the pool. */
export interface PolicyContext {
  /** As WarmPoolService.state() reads it: arrivals in the window of the higher rate, the refill median. */
  demand: WarmPoolDemand
  /** Simulated seconds since the day began. */
  now: number
  /** Arrivals over another window (for variants of the policy). */
  arrivalsIn(windowSeconds: number): number
}

/** How the pool's size is chosen from demand, before hints; the real policy is warmPoolTarget. */
export type TargetPolicy = (context: PolicyContext, min: number, max: number) => number
export const shippedPolicy: TargetPolicy = ({ demand }, min, max) => warmPoolTarget(demand, min, max)

/** A hint as POST /v1/warm-pool/hints makes one: `count` more agents for `seconds` from `at`. */
export interface Hint {
  at: number
  count: number
  seconds: number
}

/** A hint for each burst, `leadSeconds` before it, of its size (at most `max`, as the API allows), lasting `seconds`. */
export function burstHints(day: DayWorkload, leadSeconds: number, max: number, seconds = 600): Hint[] {
  return day.bursts.map((b) => ({ at: b.at - leadSeconds, count: Math.min(b.count, max), seconds }))
}

export interface ReplayResult {
  min: number
  max: number
  acquires: number
  hits: number
  hitRate: number
  /** The hit rate of the acquires outside the bursts. */
  hitRateOutsideBursts: number
  agentsLaunched: number
  /** Agent-hours the pool ran unclaimed (launch to claim, or to stop), Fargate's 1-minute minimum on unclaimed ones. */
  idleAgentHours: number
  /** Agent-hours the sessions ran (a claimed agent from its claim; a cold one from its launch) until released. */
  sessionAgentHours: number
  /** Largest target any pass computed. */
  peakTarget: number
}

interface Agent {
  launchedAt: number
  runningAt: number
  readyAt: number
  state: 'starting' | 'ready' | 'gone'
}

/** Replays the day against one (min, max). maxAgeSeconds: MAX_SESSION_SECONDS / 2 by default (src/runtime.ts). */
export function replay(day: DayWorkload, min: number, max: number, options: { policy?: TargetPolicy; hints?: Hint[]; maxAgeSeconds?: number } = {}): ReplayResult {
  const { policy = shippedPolicy, hints = [], maxAgeSeconds = 21_600 } = options
  const agents: Agent[] = []
  const demandTimes: number[] = []
  const claimTimes: number[] = []
  const starts: Array<{ at: number; seconds: number }> = []
  let idleS = 0
  let sessionS = 0
  let hits = 0
  let baseHits = 0
  let launched = 0
  let peakTarget = 0
  const end = (a: Agent, at: number, claimed: boolean) => {
    a.state = 'gone'
    const idle = at - a.launchedAt
    idleS += claimed ? idle : Math.max(60, idle)
  }
  const advance = (now: number) => {
    for (const a of agents) {
      if (a.state === 'starting' && a.readyAt <= now) {
        a.state = 'ready'
        starts.push({ at: a.runningAt, seconds: a.runningAt - a.launchedAt })
      }
    }
  }
  const pass = (now: number) => {
    advance(now)
    const live = agents.filter((a) => a.state !== 'gone')
    for (const a of live) if (a.state === 'ready' && now - a.launchedAt >= maxAgeSeconds) end(a, now, false)
    const arrivalsIn = (windowSeconds: number) => demandTimes.filter((t) => t > now - windowSeconds).length
    const recentStarts = starts.filter((s) => s.at > now - 3600).map((s) => s.seconds).sort((x, y) => x - y)
    const refillSeconds = recentStarts.length ? medianOfSorted(recentStarts) : DEFAULT_REFILL_SECONDS
    const demand = { ...demandRate(arrivalsIn(DEMAND_WINDOW_SECONDS), arrivalsIn(DEMAND_LONG_WINDOW_SECONDS)), refillSeconds }
    const active = hints.filter((h) => h.at <= now && now < h.at + h.seconds)
    const since = Math.min(...active.map((h) => h.at))
    const hinted = active.length ? Math.max(0, active.reduce((n, h) => n + h.count, 0) - claimTimes.filter((t) => t >= since).length) : 0
    const target = max > 0 ? Math.min(max, Math.max(min, policy({ demand, now, arrivalsIn }, 0, max) + hinted)) : 0
    peakTarget = Math.max(peakTarget, target)
    const alive = agents.filter((a) => a.state !== 'gone')
    const missing = Math.min(MAX_REFILLS_PER_PASS, target - alive.length)
    for (let i = 0; i < missing; i++) {
      const startS = day.refillS()
      agents.push({ launchedAt: now, runningAt: now + startS, readyAt: now + startS, state: 'starting' })
      launched++
    }
    if (alive.length > target) {
      const ready = alive.filter((a) => a.state === 'ready').sort((x, y) => x.readyAt - y.readyAt)
      for (const a of ready.slice(0, alive.length - target)) end(a, now, false)
    }
    // Keep the arrays short: a day has a few thousand agents at most.
    if (agents.length > 5000) agents.splice(0, agents.length, ...agents.filter((a) => a.state !== 'gone'))
  }

  let next = 0
  for (let now = 0; now <= DAY; now += WARM_POOL_PASS_SECONDS) {
    // Acquires between this pass and the next, in order, each seeing the agents ready by then.
    while (next < day.arrivals.length && day.arrivals[next]!.at < now + WARM_POOL_PASS_SECONDS) {
      const arrival = day.arrivals[next++]!
      advance(arrival.at)
      demandTimes.push(arrival.at)
      const ready = agents.filter((a) => a.state === 'ready').sort((x, y) => x.readyAt - y.readyAt)[0]
      if (ready) {
        hits++
        claimTimes.push(arrival.at)
        if (!arrival.burst) baseHits++
        end(ready, arrival.at, true)
        sessionS += arrival.durationS
      } else {
        // A cold start runs the task from its launch: its minute of start is the session's.
        sessionS += day.refillS() + arrival.durationS
      }
    }
    if (now + WARM_POOL_PASS_SECONDS <= DAY) pass(now + WARM_POOL_PASS_SECONDS)
  }
  // The day ends: what is still warm is counted to the end of the day.
  for (const a of agents) if (a.state !== 'gone') end(a, DAY, false)
  const acquires = day.arrivals.length
  return {
    min,
    max,
    acquires,
    hits,
    hitRate: acquires ? hits / acquires : 0,
    hitRateOutsideBursts: baseHits / Math.max(1, day.arrivals.filter((a) => !a.burst).length),
    agentsLaunched: launched,
    idleAgentHours: idleS / 3600,
    sessionAgentHours: sessionS / 3600,
    peakTarget,
  }
}

function medianOfSorted(xs: number[]): number {
  const mid = Math.floor(xs.length / 2)
  return xs.length % 2 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2
}
