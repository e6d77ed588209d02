import { Type } from 'typebox'
import { Text, Uuid } from './common.ts'

export const CreatePinBody = Type.Object(
  {
    snapshot: Text({ minLength: 1, maxLength: 2048, description: 'As for POST /v1/leases: s3://bucket/key-or-prefix or file:///abs/path under SNAPSHOT_ROOT' }),
    collection: Type.Optional(Text({ minLength: 1, maxLength: 512, description: 'A collection that must be in the snapshot: the pinned sessions are READY only once they have it' })),
    mode: Type.Optional(Type.Union([Type.Literal('shared'), Type.Literal('exclusive')], { default: 'shared', description: "shared: keep the snapshot's shared session READY; exclusive: keep `sessions` standbys that exclusive acquires take" })),
    sessions: Type.Optional(Type.Integer({ minimum: 1, maximum: 50, default: 1, description: 'Sessions kept READY with no lease (1 for a shared pin)' })),
  },
  { additionalProperties: false },
)

export const Pin = Type.Object(
  {
    id: Uuid,
    snapshot: Type.String({ description: 'The canonical snapshot URI' }),
    collection: Type.Union([Type.String(), Type.Null()]),
    mode: Type.Union([Type.Literal('shared'), Type.Literal('exclusive')]),
    sessions: Type.Integer(),
    ready: Type.Integer({ description: 'Of the sessions the pin keeps, how many are READY now' }),
    starting: Type.Integer({ description: '… and how many are PENDING or STARTING' }),
    createdBy: Type.String(),
    createdAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Pin' },
)

export const PinList = Type.Object({ pins: Type.Array(Type.Ref('Pin')) })
