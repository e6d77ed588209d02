import { Type } from 'typebox'

const Include = Type.Union(['documents', 'metadatas', 'distances', 'embeddings'].map((s) => Type.Literal(s)))

export const QueryBody = Type.Object(
  {
    collection: Type.String({ minLength: 1, maxLength: 512 }),
    queryEmbeddings: Type.Array(Type.Array(Type.Number(), { minItems: 1, maxItems: 8192 }), { minItems: 1, maxItems: 100 }),
    nResults: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
    where: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    whereDocument: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    include: Type.Array(Include, { default: ['documents', 'metadatas', 'distances'], uniqueItems: true }),
    maxResultBytes: Type.Integer({
      minimum: 1024,
      maximum: 262144,
      default: 204800,
      description: 'Trim results (farthest first) so the JSON answer fits; Step Functions fails executions whose state exceeds 256 KB',
    }),
  },
  { additionalProperties: false },
)

export const QueryAnswer = Type.Object({
  collection: Type.String(),
  ids: Type.Array(Type.Array(Type.String())),
  documents: Type.Optional(Type.Union([Type.Array(Type.Array(Type.Union([Type.String(), Type.Null()]))), Type.Null()])),
  metadatas: Type.Optional(Type.Union([Type.Array(Type.Array(Type.Unknown())), Type.Null()])),
  distances: Type.Optional(Type.Union([Type.Array(Type.Array(Type.Union([Type.Number(), Type.Null()]))), Type.Null()])),
  embeddings: Type.Optional(Type.Union([Type.Array(Type.Array(Type.Unknown())), Type.Null()])),
  truncated: Type.Boolean(),
  returned: Type.Integer(),
  total: Type.Integer(),
  note: Type.Optional(Type.String()),
})
