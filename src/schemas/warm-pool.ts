import { Type } from 'typebox'
import { Uuid } from './common.ts'
import { IdleCost } from './cost.ts'

export const WarmPoolQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'Agents listed at most' }),
})


export const WarmPool = Type.Object({
  enabled: Type.Boolean({ description: 'WARM_POOL_MAX > 0' }),
  min: Type.Integer({ description: 'WARM_POOL_MIN' }),
  max: Type.Integer({ description: 'WARM_POOL_MAX' }),
  target: Type.Integer({ description: 'The size the pool is kept at now: one more than the Poisson 95% quantile of recent demand over one replacement (a pass and a refill), plus `hinted`, within min..max' }),
  unfilled: Type.Integer({ description: 'Target minus READY agents (0 when full)' }),
  hinted: Type.Integer({ description: 'Agents the target holds for active hints (POST /v1/warm-pool/hints): their counts less the warm claims since the earliest of them, never negative; added to what demand asks for, within min..max' }),
  counts: Type.Object({ pending: Type.Integer(), starting: Type.Integer(), ready: Type.Integer() }, { description: 'Unclaimed agents by status' }),
  demand: Type.Object({
    arrivals: Type.Integer({ description: 'Acquires that needed a new session in the window (warm claims and cold launches)' }),
    windowSeconds: Type.Integer({ description: 'The window whose rate is the higher, and so sizes the pool: the last 900 s or the last 3600 s' }),
    refillSeconds: Type.Number({ description: 'How long a warm agent takes from launch to running (median of the last hour, or 60 before any)' }),
  }),
  idle: IdleCost,
  agents: Type.Array(
    Type.Object({
      id: Uuid,
      status: Type.Union([Type.Literal('PENDING'), Type.Literal('STARTING'), Type.Literal('READY'), Type.Literal('DRAINING'), Type.Literal('STOPPING')]),
      generation: Type.Integer(),
      host: Type.Union([Type.String(), Type.Null()]),
      port: Type.Union([Type.Integer(), Type.Null()]),
      createdAt: Type.String({ format: 'date-time' }),
      readyAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    }),
    { description: 'Unclaimed agents, newest first' },
  ),
})

export const CreateWarmPoolHintBody = Type.Object(
  {
    count: Type.Integer({ minimum: 1, maximum: 1000, description: 'Acquires needing a new session that are coming (e.g. a Map state\'s fan-out): the pool adds this many agents to its target, at most WARM_POOL_MAX (400 warm_pool_hint_above_max beyond it)' }),
    seconds: Type.Optional(Type.Integer({ minimum: 30, maximum: 3600, default: 600, description: 'How long the hint lasts (DELETE ends it earlier); it adds no agent once as many warm claims came since' })),
  },
  { additionalProperties: false },
)

export const WarmPoolHint = Type.Object(
  {
    id: Uuid,
    count: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    expiresAt: Type.String({ format: 'date-time', description: 'createdAt plus seconds, on the database clock' }),
  },
  { $id: 'WarmPoolHint' },
)

export const WarmPoolHintList = Type.Object({ hints: Type.Array(Type.Ref('WarmPoolHint'), { description: "Active hints, oldest first: a client key's own, or all for an operator" }) })
