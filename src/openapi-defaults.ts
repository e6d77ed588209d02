/**
 * The route schemas give defaults to fields the server fills in (ajv's useDefaults), and
 * @fastify/swagger lists such fields as required, which they are not: a request without
 * them is valid. This marks them optional in the spec, so openapi.yaml and the client
 * generated from it (packages/client) do not demand what the server does not.
 */
export function optionalDefaults<T>(spec: T): T {
  const paths = (spec as { paths?: Record<string, Record<string, Operation>> }).paths ?? {}
  for (const item of Object.values(paths)) {
    for (const operation of Object.values(item)) {
      if (typeof operation !== 'object' || operation === null) continue
      for (const parameter of operation.parameters ?? []) {
        if (parameter.in !== 'path' && parameter.schema && 'default' in parameter.schema) parameter.required = false
      }
      for (const media of Object.values(operation.requestBody?.content ?? {})) dropDefaultedFromRequired(media.schema)
    }
  }
  return spec
}

interface Operation {
  parameters?: Array<{ in: string; required?: boolean; schema?: Record<string, unknown> }>
  requestBody?: { content?: Record<string, { schema?: unknown }> }
}

function dropDefaultedFromRequired(schema: unknown): void {
  if (typeof schema !== 'object' || schema === null) return
  const s = schema as { required?: string[]; properties?: Record<string, Record<string, unknown>>; anyOf?: unknown[]; oneOf?: unknown[]; allOf?: unknown[] }
  if (s.properties) {
    if (s.required) {
      s.required = s.required.filter((name) => !(s.properties![name] && 'default' in s.properties![name]!))
      if (s.required.length === 0) delete s.required
    }
    for (const property of Object.values(s.properties)) dropDefaultedFromRequired(property)
  }
  for (const branch of [...(s.anyOf ?? []), ...(s.oneOf ?? []), ...(s.allOf ?? [])]) dropDefaultedFromRequired(branch)
}
