import { readFile } from 'node:fs/promises'
import t from 'tap'
import { openapiYaml } from '../scripts/openapi-yaml.ts'
import { buildTestApp } from './helpers/app.ts'

const ctx = await buildTestApp(t, { launcher: 'process' })
await ctx.app.ready()
const spec = ctx.app.swagger() as unknown as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> }

t.test('openapi.yaml is what the routes generate (run `npm run openapi` after changing a route)', async (t) => {
  const committed = await readFile(new URL('../openapi.yaml', import.meta.url), 'utf8')
  t.equal(committed, openapiYaml(spec))
})

t.test('the spec covers the DESIGN.md contract', async (t) => {
  const expected: Array<[string, string]> = [
    ['post', '/v1/leases'],
    ['get', '/v1/leases/{id}'],
    ['post', '/v1/leases/{id}/renew'],
    ['delete', '/v1/leases/{id}'],
    ['get', '/v1/sessions'],
    ['get', '/v1/sessions/{id}'],
    ['get', '/v1/sessions/{id}/events'],
    ['delete', '/v1/sessions/{id}'],
    ['post', '/v1/sessions/{id}/query'],
    ['post', '/api/v2/{*}'],
    ['get', '/v1/sessions/{id}/chroma/{*}'],
    ['get', '/healthz'],
    ['get', '/readyz'],
    ['get', '/metrics'],
  ]
  for (const [method, path] of expected) t.ok(spec.paths[path]?.[method], `${method.toUpperCase()} ${path}`)
  const created = spec.paths['/v1/leases']!.post!.responses
  t.same(Object.keys(created).sort(), ['200', '201', '400', '401', '403', '404', '409', '422', '502', '503'])
  t.ok((created['422'] as { content: Record<string, unknown> }).content['application/problem+json'], 'errors are problem+json')
})

t.test('/openapi.json serves the spec and /docs serves Swagger UI', async (t) => {
  const json = await ctx.app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(json.statusCode, 200)
  t.same(json.json(), JSON.parse(JSON.stringify(spec)))
  const docs = await ctx.app.inject({ method: 'GET', url: '/docs/' })
  t.equal(docs.statusCode, 200)
  t.match(docs.body, /swagger-ui/i)
})
