import { Type } from 'typebox'
import { Text, WaitSeconds, Uuid } from './common.ts'

export const AcquireBody = Type.Object(
  {
    snapshot: Text({
      minLength: 1,
      maxLength: 2048,
      description: 's3://bucket/key-or-prefix, or file:///abs/path (a tar archive or a directory) under SNAPSHOT_ROOT',
    }),
    collection: Type.Optional(Text({ minLength: 1, maxLength: 512, description: 'A collection the caller will use: checked once the session serves (404 collection_not_found, lease ended, when the snapshot does not hold it); an exclusive session waits for it to exist. A shared session serves every collection of its snapshot' })),
    mode: Type.Optional(Type.Union([Type.Literal('shared'), Type.Literal('exclusive')], { description: 'shared (default): reuse the pool session; exclusive: a private one' })),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 5, description: 'Lease TTL; renew or use the proxy to keep it alive' })),
    idleTtlSeconds: Type.Optional(Type.Integer({ minimum: 0, description: 'Session idle TTL, set by the acquire that creates the session' })),
    waitSeconds: Type.Optional(WaitSeconds),
    holder: Type.Optional(Text({ maxLength: 2048, description: 'Free text, e.g. a Step Functions execution ARN' })),
    saveOnRelease: Type.Optional(Type.Boolean({ description: 'Exclusive s3:// sessions only: when the lease ends, save the data back as a new snapshot version (session.savedSnapshot), then stop' })),
  },
  { additionalProperties: false },
)

export const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(Text({ minLength: 1, maxLength: 255, description: 'Retries with the same key return the same lease' })),
})

export const Lease = Type.Object(
  {
    id: Uuid,
    token: Type.Optional(Type.String({ description: 'Bearer token for the proxy and query routes; returned on creation and its idempotent replays only' })),
    sessionToken: Type.Union([Type.String(), Type.Null()], {
      description: "This lease's token for session.endpoint (x-chroma-token or Authorization: Bearer), for callers that go to the session directly: the session's agent accepts it until the lease's expiresAt (a renewal gives a new token, so read it again after renewing) and refuses it within seconds of a release; shown to the lease's own holder only (operators reading others' leases see null), and null unless the lease is active and the session serving",
    }),
    status: Type.Union([Type.Literal('active'), Type.Literal('released'), Type.Literal('expired'), Type.Literal('ended')], {
      description: 'active; released (its holder let it go); expired (its TTL ran out); ended (its session ended it: see endReason)',
    }),
    endReason: Type.Union(
      [
        Type.Literal('released'),
        Type.Literal('expired'),
        Type.Literal('collection_not_found'),
        Type.Literal('session_failed'),
        Type.Literal('force_stopped'),
        Type.Literal('max_lifetime'),
        Type.Literal('session_ended'),
        Type.Null(),
      ],
      {
        description:
          'Why it ended, null while active: released, expired, collection_not_found (the acquire named a collection its snapshot does not hold), session_failed (its session failed), force_stopped (an operator force-stopped its session), max_lifetime (its session reached MAX_SESSION_SECONDS), session_ended (its session ended otherwise)',
      },
    ),
    holder: Type.Union([Type.String(), Type.Null()]),
    ttlSeconds: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    expiresAt: Type.String({ format: 'date-time' }),
    endedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    session: Type.Ref('Session'),
  },
  { $id: 'Lease' },
)

export const LeaseList = Type.Object({ leases: Type.Array(Type.Ref('Lease')) })

export const LeaseListQuery = Type.Object({
  sessionId: Type.Optional(Uuid),
  active: Type.Optional(Type.Boolean({ description: 'Only active leases' })),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
})

export const GetLeaseQuery = Type.Object({ waitSeconds: Type.Integer({ ...WaitSeconds, default: 0 }) })

export const RenewBody = Type.Union([
  Type.Object({ ttlSeconds: Type.Optional(Type.Integer({ minimum: 5 })) }, { additionalProperties: false }),
  Type.Null(),
])
