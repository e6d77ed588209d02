import { Type } from 'typebox'
import { Text, Uuid } from './common.ts'

export const ApiKeyRole = Type.Union([Type.Literal('client'), Type.Literal('operator')], {
  description: 'client: leases; operator: everything (sessions, keys)',
})

export const ApiKey = Type.Object(
  {
    id: Uuid,
    name: Type.String(),
    role: ApiKeyRole,
    fingerprint: Type.String({ description: 'The first 8 hex digits of the sha256 of the key, to tell keys apart' }),
    createdAt: Type.String({ format: 'date-time' }),
    revokedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  },
  { $id: 'ApiKey' },
)

export const ApiKeyList = Type.Object({ keys: Type.Array(Type.Ref('ApiKey')) })

export const CreateKeyBody = Type.Object(
  {
    name: Text({ minLength: 1, maxLength: 200, description: 'What the key is for, e.g. "step-functions prod"' }),
    role: Type.Optional(ApiKeyRole),
  },
  { additionalProperties: false },
)

export const CreatedKey = Type.Object({
  id: Uuid,
  name: Type.String(),
  role: ApiKeyRole,
  fingerprint: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  revokedAt: Type.Null(),
  key: Type.String({ description: 'The key itself: shown this once, stored only as a hash' }),
  enabledNow: Type.Boolean({ description: 'True when this was the first key: the API-key check is on from now on, on every replica within 5 s' }),
})
