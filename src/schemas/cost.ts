import { Type } from 'typebox'
import { Text } from './common.ts'
import { WarmPoolIdleCost } from './warm-pool.ts'

export const CostQuery = Type.Object({
  since: Type.Optional(Type.String({ format: 'date-time', description: 'Only leases acquired at or after this time' })),
  holder: Type.Optional(Text({ maxLength: 2048, description: "One workflow: the leases' holder, exactly" })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
})

export const WorkflowCosts = Type.Object({
  workflows: Type.Array(
    Type.Object({
      holder: Type.Union([Type.String(), Type.Null()], { description: "The leases' holder (e.g. an execution ARN); null for leases acquired without one" }),
      leases: Type.Integer(),
      sessions: Type.Integer({ description: 'Sessions those leases held' }),
      costUsd: Type.Number({ description: "The leases' shares of their sessions' costs at the configured Fargate prices, so far (final once the sessions have ended)" }),
      unpricedLeases: Type.Integer({ description: 'Leases on sessions that reported no size (local processes): no share counted' }),
      firstLeaseAt: Type.String({ format: 'date-time' }),
      lastLeaseAt: Type.String({ format: 'date-time' }),
    }),
  ),
  warmPool: Type.Union([WarmPoolIdleCost, Type.Null()], {
    description: "The warm pool's idle cost (agents launched since `since`): what warm agents ran before a claim, no workflow's share; null for a client, who sees only its own leases",
  }),
})
