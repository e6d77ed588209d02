import { Type } from 'typebox'
import { Text } from './common.ts'

export const CostQuery = Type.Object({
  since: Type.Optional(Type.String({ format: 'date-time', description: 'Only leases acquired at or after this time' })),
  holder: Type.Optional(Text({ maxLength: 2048, description: "One workflow: the leases' holder, exactly" })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
})

export const IdleCost = Type.Object({
  agents: Type.Integer({ description: 'Agents (warm pool) or standbys (pins) launched, since `since` when given' }),
  idleSeconds: Type.Integer({ description: 'What they ran before a claim, or until they ended unclaimed' }),
  costUsd: Type.Number({ description: "That time at the configured Fargate prices, with each task's one-minute minimum" }),
  unpricedAgents: Type.Integer({ description: 'Agents whose launcher reported no size (local processes): no price' }),
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
  warmPool: Type.Union([IdleCost, Type.Null()], {
    description: "The warm pool's idle cost (agents launched since `since`): what warm agents ran before a claim, no workflow's share; null for a client, who sees only its own leases",
  }),
  pins: Type.Union([IdleCost, Type.Null()], {
    description: "What exclusive pins' standbys (started since `since`) ran before an acquire took them: no workflow's share; null for a client",
  }),
})
