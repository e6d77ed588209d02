import t from 'tap'
import fc from 'fast-check'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { buildTestApp } from './helpers/app.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'

/**
 * Bad input never reaches SQL and never changes state (DESIGN.md, HTTP API): every
 * route of the app, read from its own OpenAPI document (so a new route is covered
 * without touching this file), is driven with requests generated from its own schemas
 * and with mutations of them (wrong types, extra fields, huge and odd unicode strings,
 * odd ids, bad JSON, wrong content types, missing or wrong credentials), against the
 * real app on a real database. Every answer must be below 500, and every 4xx must be a
 * problem document and leave every table as it was.
 *
 * Seeded and bounded: FUZZ_SEED and FUZZ_RUNS override the defaults to explore further.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 20261205)
const RUNS = Number(process.env.FUZZ_RUNS ?? 500)
const OPERATOR = 'fuzz-operator-key-0123456789'
const CLIENT = 'fuzz-client-key-0123456789'

t.test('every route answers generated and mutated requests with no 5xx and no change on a 4xx', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'chroma-lease-fuzz-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  await mkdir(join(root, 'snap'))
  await writeFile(join(root, 'snap', 'chroma.sqlite3'), '')
  const snapshot = `file://${join(root, 'snap')}`

  const ctx = await buildTestApp(t, {
    snapshotRoot: root,
    launcher: new ScriptedLauncher(),
    apiKeys: [{ role: 'operator', key: OPERATOR }, { role: 'client', key: CLIENT }],
    // Its sessions never start: proxied requests are refused at once (409) rather than held
    // for PROXY_HOLD_SECONDS each (holding is test/request-hold.test.ts's).
    hold: { holdSeconds: 0, maxPerSession: 64 },
  })
  const { app } = ctx

  // Some state to aim at: a pooled and an exclusive lease (with their sessions), and a released one.
  async function acquire(body: Record<string, unknown>) {
    const res = await app.inject({ method: 'POST', url: '/v1/leases', headers: { 'x-api-key': CLIENT }, payload: body })
    if (res.statusCode !== 201) throw new Error(`seed acquire: ${res.statusCode} ${res.body}`)
    return res.json() as { id: string; token: string; session: { id: string } }
  }
  const shared = await acquire({ snapshot, holder: 'fuzz' })
  const exclusive = await acquire({ snapshot, mode: 'exclusive' })
  const released = await acquire({ snapshot, collection: 'c', mode: 'exclusive' })
  await app.inject({ method: 'DELETE', url: `/v1/leases/${released.id}`, headers: { 'x-api-key': CLIENT } })
  const keys = (await app.inject({ method: 'GET', url: '/v1/keys', headers: { 'x-api-key': OPERATOR } })).json().keys as Array<{ id: string; role: string }>
  // The operator key's own id is left out: revoking it (after the fuzzer made another
  // operator key) would leave the rest of the run answering 401.
  const knownIds = [shared.id, shared.session.id, exclusive.id, exclusive.session.id, released.id, released.session.id, ...keys.filter((k) => k.role === 'client').map((k) => k.id)]
  const tokens = [shared.token, exclusive.token, released.token]

  // The defects this test found, pinned: each was a 500 from Postgres.
  const status = async (req: { method: 'GET' | 'POST'; url: string; payload?: Record<string, unknown>; headers?: Record<string, string> }) =>
    (await app.inject({ ...req, headers: { 'x-api-key': OPERATOR, ...req.headers } })).statusCode
  t.equal(await status({ method: 'GET', url: `/v1/leases/urn:uuid:${shared.id}` }), 400, 'an id as urn:uuid:… is a 400')
  t.equal(await status({ method: 'GET', url: `/v1/leases?sessionId=urn:uuid:${shared.session.id}` }), 400, 'so is a sessionId filter')
  t.equal(await status({ method: 'POST', url: '/v1/leases', payload: { snapshot, holder: 'a\u0000b' } }), 400, 'a NUL in text is a 400')
  t.equal(await status({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: '\ud800' } }), 400, 'so is a lone surrogate')
  t.equal(await status({ method: 'GET', url: '/v1/costs?holder=%00' }), 400, 'in a query string too')
  t.equal(await status({ method: 'POST', url: '/v1/leases', payload: { snapshot, holder: 'wf-\u{1F680}-é' } }), 201, 'any other Unicode text is fine')
  t.equal(await status({ method: 'GET', url: `/v1/leases/${shared.id.toUpperCase()}` }), 200, 'an upper-case id is canonical too')

  /** Ids as clients write them, most of them not the canonical 8-4-4-4-12 form. */
  const oddIds = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...knownIds) },
    { weight: 1, arbitrary: fc.uuid() },
    {
      weight: 2,
      arbitrary: fc.constantFrom(...knownIds).chain((id) =>
        fc.constantFrom(`urn:uuid:${id}`, `URN:UUID:${id}`, id.toUpperCase(), `{${id}}`, id.replaceAll('-', ''), ` ${id}`, `${id} `, `${id}\u0000`, `${id}x`, id.slice(0, -1)),
      ),
    },
    { weight: 1, arbitrary: fc.constantFrom('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '', '.', '..', '%', '\u0000', 'null', '-1', '1e400', 'x'.repeat(5000)) },
  )

  const nastyStrings = fc.oneof(
    { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
    { weight: 3, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
    { weight: 3, arbitrary: fc.constantFrom('\u0000', 'a\u0000b', '\ud800', '\udfff', '\uffff', '%00', "'; DROP TABLE leases; --", '${x}', '../../etc/passwd', 's3://', 's3://b/', 'file:///', 'file://../x', 'file:///%2e%2e/x', 's3://bucket/\u0000', '1e309', '-0', 'NaN', 'true', '[]', '{}') },
    { weight: 1, arbitrary: fc.constantFrom('é'.repeat(100_000), 'x'.repeat(300_000)) },
  )

  const wrongTypes = fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    nastyStrings,
    fc.constantFrom(null, true, false, 0, -1, 1.5, 2 ** 53, -(2 ** 63), 1e308, [], {}, [null], { '': null }),
  )

  type Schema = Record<string, any>
  const spec = app.swagger() as any

  function deref(schema: Schema): Schema {
    if (schema?.$ref) {
      const name = String(schema.$ref).split('/').pop()!
      return spec.components.schemas[name]
    }
    return schema
  }

  /** An arbitrary of the values a JSON schema admits (sizes capped to keep requests small). */
  function fromSchema(raw: Schema, depth = 0): fc.Arbitrary<unknown> {
    const schema = deref(raw)
    if (!schema || Object.keys(schema).length === 0) return fc.jsonValue({ maxDepth: 1 })
    if ('const' in schema) return fc.constant(schema.const)
    if (schema.enum) return fc.constantFrom(...schema.enum)
    const union = schema.anyOf ?? schema.oneOf
    if (union) return fc.oneof(...union.map((s: Schema) => fromSchema(s, depth)))
    if (Array.isArray(schema.type)) return fc.oneof(...schema.type.map((type: string) => fromSchema({ ...schema, type }, depth)))
    switch (schema.type) {
      case 'string':
        if (schema.format === 'uuid') return oddIds
        if (schema.format === 'date-time') return fc.date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString())
        // Free text (no pattern, or the no-NUL text pattern): what a client types, and now
        // and then what Postgres text cannot hold (NUL) or JSON cannot carry (a lone surrogate).
        if (schema.pattern && !schema.pattern.includes('\\u0000')) return fc.stringMatching(new RegExp(schema.pattern))
        return fc.oneof(
          { weight: 4, arbitrary: fc.string({ minLength: schema.minLength ?? 0, maxLength: Math.min(schema.maxLength ?? 40, 40) }) },
          { weight: 1, arbitrary: fc.constantFrom('a\u0000b', '\u0000', '\ud800', 'x\udfff', '\udc00\ud800') },
        )
      case 'integer':
      {
        // Mostly small values (server limits such as MAX_LEASE_TTL_SECONDS are not in the schema), sometimes any.
        const min = schema.minimum ?? -1_000_000
        const max = Math.min(schema.maximum ?? 1_000_000, 1_000_000)
        return fc.oneof({ weight: 3, arbitrary: fc.integer({ min, max: Math.min(max, Math.max(min, 0) + 600) }) }, { weight: 1, arbitrary: fc.integer({ min, max }) })
      }
      case 'number':
        return fc.double({ min: schema.minimum ?? -1e6, max: schema.maximum ?? 1e6, noNaN: true })
      case 'boolean':
        return fc.boolean()
      case 'null':
        return fc.constant(null)
      case 'array': {
        const min = schema.minItems ?? 0
        return fc.array(depth > 3 ? fc.constant(null) : fromSchema(schema.items ?? {}, depth + 1), { minLength: min, maxLength: Math.max(min, Math.min(schema.maxItems ?? 3, 3)) })
      }
      case 'object': {
        const props = schema.properties ?? {}
        if (Object.keys(props).length === 0) return fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 })
        const model = Object.fromEntries(Object.entries(props).map(([k, s]) => [k, k === 'snapshot' ? fc.oneof({ weight: 3, arbitrary: fc.constant(snapshot) }, { weight: 1, arbitrary: fromSchema(s as Schema, depth + 1) }) : fromSchema(s as Schema, depth + 1)]))
        return fc.record(model, { requiredKeys: schema.required ?? [] })
      }
      default:
        return fc.jsonValue({ maxDepth: 1 })
    }
  }

  /** Mutates one part of a generated object: a wrong-typed value, a removed field, an extra field. */
  function mutateObject(value: Record<string, unknown>): fc.Arbitrary<Record<string, unknown>> {
    const keys = Object.keys(value)
    const options: fc.Arbitrary<Record<string, unknown>>[] = [
      fc.tuple(fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'toString', '')), wrongTypes).map(([k, v]) => ({ ...value, [k]: v })),
    ]
    if (keys.length > 0) {
      options.push(fc.tuple(fc.constantFrom(...keys), wrongTypes).map(([k, v]) => ({ ...value, [k]: v })))
      options.push(fc.constantFrom(...keys).map((k) => Object.fromEntries(Object.entries(value).filter(([key]) => key !== k))))
    }
    return fc.oneof(...options)
  }

  interface Operation {
    method: string
    path: string
    pathParams: Array<{ name: string; schema: Schema }>
    query: Schema
    headers: Schema
    body: Schema | null
  }

  /** Every operation in the app's own OpenAPI document. */
  function operations(): Operation[] {
    const ops: Operation[] = []
    for (const [path, item] of Object.entries<any>(spec.paths)) {
      for (const [method, op] of Object.entries<any>(item)) {
        if (!['get', 'post', 'put', 'patch', 'delete'].includes(method)) continue
        const params: any[] = op.parameters ?? []
        const asObject = (where: string) => ({
          type: 'object',
          properties: Object.fromEntries(params.filter((p) => p.in === where).map((p) => [p.name, p.schema ?? {}])),
          required: params.filter((p) => p.in === where && p.required).map((p) => p.name),
        })
        ops.push({
          method: method.toUpperCase(),
          path,
          pathParams: params.filter((p) => p.in === 'path').map((p) => ({ name: p.name, schema: p.schema ?? {} })),
          query: asObject('query'),
          headers: asObject('header'),
          body: op.requestBody?.content?.['application/json']?.schema ?? null,
        })
      }
    }
    return ops
  }

  const CONTENT_TYPES = ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'application/jsonx', 'application/xml', '', 'application/json, text/plain']
  const BAD_JSON = ['{', '{"snapshot":', 'null', '[]', '"x"', '1', '{"a":1}{', '\u0000', '{"snapshot":"\\ud800"}', '{"__proto__":{"x":1}}', `{"a":${'['.repeat(5000)}`]

  /** A path segment as a client's URL library writes it (lone surrogates become U+FFFD, as in UTF-8 on the wire). */
function percentEncoded(text: string): string {
  return [...Buffer.from(text, 'utf8')].map((b) => (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('')
}

interface Request {
    method: string
    url: string
    headers: Record<string, string>
    payload?: string
    label: string
  }

  function requestFor(op: Operation): fc.Arbitrary<Request> {
    const params = fc.record(
      Object.fromEntries(op.pathParams.map((p) => [p.name, p.name === '*' ? fc.oneof(fc.constantFrom('api/v2/heartbeat', 'api/v2/collections', 'api/v2', 'x'), fc.string({ maxLength: 20 })) : fc.oneof({ weight: 4, arbitrary: fromSchema(p.schema) }, { weight: 1, arbitrary: nastyStrings })])),
    ) as fc.Arbitrary<Record<string, unknown>>
    const query = (fromSchema(op.query) as fc.Arbitrary<Record<string, unknown>>).chain((q) => fc.oneof({ weight: 2, arbitrary: fc.constant(q) }, { weight: 1, arbitrary: mutateObject(q) }))
    const headers = (fromSchema(op.headers) as fc.Arbitrary<Record<string, unknown>>).chain((h) => fc.oneof({ weight: 3, arbitrary: fc.constant(h) }, { weight: 1, arbitrary: mutateObject(h) }))
    const auth = fc.oneof(
      { weight: 4, arbitrary: fc.constant({ 'x-api-key': OPERATOR }) },
      { weight: 2, arbitrary: fc.constant({ 'x-api-key': CLIENT }) },
      { weight: 2, arbitrary: fc.constantFrom(...tokens).map((tok) => ({ 'x-chroma-token': tok })) },
      { weight: 1, arbitrary: fc.constantFrom<Record<string, string>>({}, { authorization: 'Bearer ' }, { authorization: `Bearer ${OPERATOR}x` }, { 'x-api-key': '\u00e9' }, { authorization: 'Basic Zm9vOmJhcg==' }) },
    )
    const bodySchema = op.body
    const json = bodySchema
      ? fromSchema(bodySchema).chain((b) =>
          b !== null && typeof b === 'object' && !Array.isArray(b)
            ? fc.oneof({ weight: 2, arbitrary: fc.constant(b) }, { weight: 2, arbitrary: mutateObject(b as Record<string, unknown>) }, { weight: 1, arbitrary: wrongTypes })
            : fc.oneof(fc.constant(b), wrongTypes),
        )
      : fc.option(wrongTypes, { nil: undefined, freq: 4 })
    const body = fc.oneof(
      { weight: 6, arbitrary: json.map((v) => (v === undefined ? { payload: undefined, type: undefined } : { payload: JSON.stringify(v), type: 'application/json' })) },
      { weight: 1, arbitrary: fc.constantFrom(...BAD_JSON).map((payload) => ({ payload, type: 'application/json' })) },
      { weight: 1, arbitrary: fc.tuple(json, fc.constantFrom(...CONTENT_TYPES)).map(([v, type]) => ({ payload: JSON.stringify(v ?? {}), type })) },
    )
    return fc.record({ params, query, headers, auth, body }).map(({ params, query, headers, auth, body }) => {
      let path = op.path
      for (const [name, value] of Object.entries(params)) {
        // A wildcard keeps its slashes; other parameters are one path segment.
        const text = name === '*' ? String(value) : percentEncoded(String(value))
        path = path.replace(`{${name}}`, text)
      }
      const search = new URLSearchParams()
      for (const [k, v] of Object.entries(query)) {
        // waitSeconds holds a request open for up to 50 s: keep long polls short here.
        if (k === 'waitSeconds' && Number(v) > 1) continue
        for (const item of Array.isArray(v) ? v : [v]) search.append(k, typeof item === 'string' ? item : JSON.stringify(item))
      }
      const qs = search.toString()
      const h: Record<string, string> = { ...auth }
      for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = typeof v === 'string' ? v : JSON.stringify(v)
      // Header values must be Latin-1 on the wire; drop what no client could send.
      for (const [k, v] of Object.entries(h)) if (!/^[\t\x20-\x7e\x80-\xff]*$/.test(v) || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k)) delete h[k]
      let payload = body.payload
      if (payload !== undefined && /"waitSeconds":\s*([2-9]|[1-9][0-9])/.test(payload)) payload = payload.replace(/"waitSeconds":\s*[0-9.e+]+/, '"waitSeconds":1')
      if (body.type !== undefined) {
        if (body.type === '') delete h['content-type']
        else h['content-type'] = body.type
      }
      return { method: op.method, url: `${path}${qs ? `?${qs}` : ''}`, headers: h, payload, label: `${op.method} ${op.path}` }
    })
  }

  const ops = operations()
  t.ok(ops.length >= 15, `the app's OpenAPI document lists its routes (${ops.length} operations)`)
  for (const route of ['GET /v1/leases/{id}', 'DELETE /v1/sessions/{id}', 'POST /v1/leases', 'POST /v1/sessions/{id}/query', 'GET /api/v2/{*}']) {
    t.ok(ops.some((o) => `${o.method} ${o.path}` === route), `${route} is among them`)
  }
  const anyRequest = fc.oneof(...ops.map(requestFor))

  const snapshotDb = new pg.Client({ connectionString: ctx.databaseUrl })
  await snapshotDb.connect()
  t.teardown(() => snapshotDb.end())
  const tables = (
    await snapshotDb.query<{ name: string }>(`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1`)
  ).rows.map((r) => r.name)
  t.ok(tables.includes('leases') && tables.includes('sessions'), 'every table is compared')

  /** Every row of every table, as text, in one statement (one snapshot of the database). */
  const stateQuery = tables.map((name) => `SELECT '${name}' AS t, coalesce((SELECT string_agg(to_jsonb(x)::text, E'\\n' ORDER BY to_jsonb(x)::text) FROM "${name}" x), '') AS rows`).join(' UNION ALL ')
  async function dbState(): Promise<string> {
    const { rows } = await snapshotDb.query<{ t: string; rows: string }>(stateQuery)
    return rows.map((r) => `${r.t}: ${r.rows}`).join('\n')
  }


  {
    t.comment(`${RUNS} generated requests over ${ops.length} operations (seed ${SEED})`)
    const failures: string[] = []
    const seen = new Map<string, Set<number>>()
      const requests = fc.sample(anyRequest, { seed: SEED, numRuns: RUNS })
      for (const req of requests) {
      const before = await dbState()
      const res = await app.inject({ method: req.method as 'GET', url: req.url, headers: req.headers, payload: req.payload })
      const statuses = seen.get(req.label) ?? new Set()
      statuses.add(res.statusCode)
      seen.set(req.label, statuses)
      const shown = `${req.method} ${req.url.slice(0, 200)} ${JSON.stringify(req.headers).slice(0, 200)} body=${(req.payload ?? '').slice(0, 200)}`
      if (res.statusCode >= 500) {
        failures.push(`${res.statusCode} for ${shown}: ${res.body.slice(0, 300)}`)
        continue
      }
      if (res.statusCode >= 400) {
        if (!String(res.headers['content-type']).startsWith('application/problem+json') || typeof res.json().code !== 'string') {
          failures.push(`${res.statusCode} without a problem document for ${shown}: ${res.body.slice(0, 200)}`)
        }
        if ((await dbState()) !== before) failures.push(`${res.statusCode} ${res.json().code} changed the database for ${shown}`)
      }
    }
    t.same(failures, [], 'no 5xx; every 4xx is a problem and changes nothing')
    // The run reached past validation: some route answered each class of outcome.
    const all = [...seen.values()].flatMap((s) => [...s])
    t.ok(all.some((s) => s >= 200 && s < 300), 'some requests succeeded')
    t.ok(all.includes(400) && all.includes(404), 'some were refused as invalid, some as unknown')
    t.equal(seen.size, ops.length, 'every operation was exercised')
    t.comment([...seen].map(([k, v]) => `${k}: ${[...v].sort().join(' ')}`).join('\n'))
  }
})
