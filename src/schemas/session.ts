import { Type } from 'typebox'
import { Text, Uuid } from './common.ts'

export const SessionStatus = Type.Union(
  ['PENDING', 'STARTING', 'READY', 'DRAINING', 'STOPPING', 'STOPPED', 'FAILED'].map((s) => Type.Literal(s)),
)

export const Session = Type.Object(
  {
    id: Uuid,
    mode: Type.Union([Type.Literal('shared'), Type.Literal('exclusive'), Type.Literal('warm')], { description: 'warm: an unclaimed warm pool agent (GET /v1/warm-pool), which has no snapshot yet' }),
    status: SessionStatus,
    snapshot: Type.String(),
    collection: Type.Union([Type.String(), Type.Null()]),
    leaseCount: Type.Integer({ description: 'Live (active, unexpired) leases holding the session' }),
    endpoint: Type.Union([
      Type.Object({ host: Type.String(), port: Type.Integer(), url: Type.String() }),
      Type.Null(),
    ], { description: "The session's own Chroma address; null until READY" }),
    proxyUrl: Type.String({ description: 'The same Chroma API through the control plane, authorised by the lease token' }),
    error: Type.Union([Type.String(), Type.Null()], { description: 'Why the session FAILED' }),
    stopReason: Type.Union([Type.String(), Type.Null()]),
    progress: Type.Union([
      Type.Object({
        phase: Type.String({ description: 'restoring or saving' }),
        bytes: Type.Optional(Type.Integer()),
        totalBytes: Type.Optional(Type.Integer()),
        percent: Type.Optional(Type.Integer()),
        text: Type.String({ description: 'e.g. "restoring 45%"' }),
      }),
      Type.Null(),
    ], { description: 'What the session agent last reported while restoring its snapshot or saving it back' }),
    saveOnRelease: Type.Boolean(),
    savedSnapshot: Type.Union([Type.String(), Type.Null()], { description: 'The newest snapshot version this session saved back (s3:// URI); acquire it to read what was written' }),
    savedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    generation: Type.Integer(),
    idleTtlSeconds: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    readyAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    claimedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: "When an acquire took this session from the warm pool (its start ran from here) or from a pin's standbys; null when launched for its first lease" }),
    pinId: Type.Union([Uuid, Type.Null()], { description: 'The pin this session was started for (POST /v1/pins); with claimedAt null, a standby no lease holds yet' }),
    endedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    compute: Type.Union([
      Type.Object({
        vcpu: Type.Number({ description: 'vCPUs of the task (1024 CPU units = 1)' }),
        memoryGb: Type.Number({ description: 'Memory of the task in GB (1024 MiB = 1)' }),
        architecture: Type.String({ description: 'x86_64 or arm64' }),
        capacityProvider: Type.Union([Type.String(), Type.Null()], { description: 'FARGATE or FARGATE_SPOT' }),
        runSeconds: Type.Integer({ description: 'From launch (or its claim from the warm pool) to end, or now while it runs' }),
        hourlyUsd: Type.Number({ description: 'Price per hour of this size at the configured Fargate prices' }),
        costUsd: Type.Number({ description: 'Cost so far: per-second billing with a one-minute minimum (FARGATE_SPOT at on-demand prices, an upper bound)' }),
      }),
      Type.Null(),
    ], { description: 'What the session runs on and what it costs; null until its launcher reports a size (never for local processes)' }),
    usage: Type.Union([
      Type.Object({
        memoryBytes: Type.Integer({ description: 'Resident memory of the session agent and its Chroma server together' }),
        cpuCores: Type.Number({ description: 'CPU cores they kept busy on average since the previous report (1 = one core)' }),
        at: Type.String({ format: 'date-time', description: 'When the agent reported it' }),
      }),
      Type.Null(),
    ], { description: "What the session uses, as its agent reports with the control plane's confirmations (about once a minute); null before the first" }),
  },
  { $id: 'Session' },
)

export const SessionList = Type.Object({ sessions: Type.Array(Type.Ref('Session')) })

export const SessionListQuery = Type.Object({
  status: Type.Optional(Type.Array(SessionStatus, { description: 'Only sessions in these statuses' })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  before: Type.Optional(Type.String({ format: 'date-time', description: 'Only sessions created before this time (paging)' })),
})

export const SessionEvent = Type.Object(
  {
    id: Type.String({ description: 'Monotonic event id (use as `after` to page)' }),
    at: Type.String({ format: 'date-time' }),
    type: Type.String(),
    status: Type.Union([SessionStatus, Type.Null()]),
    reason: Type.Union([Type.String(), Type.Null()]),
    leaseId: Type.Union([Type.String(), Type.Null()]),
    detail: Type.Unknown(),
  },
  { $id: 'SessionEvent' },
)

export const SessionEvents = Type.Object({ events: Type.Array(Type.Ref('SessionEvent')) })

export const SessionEventsQuery = Type.Object({
  after: Type.Optional(Type.String({ pattern: '^[0-9]{1,18}$' })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 200 }),
})

export const StopQuery = Type.Object({
  force: Type.Boolean({ default: false, description: 'Stop now, ending every lease (recorded with the reason); otherwise drain' }),
  reason: Type.Optional(Text({ maxLength: 500 })),
})
