import { createRequire } from 'node:module'
import t from 'tap'
import {
  HTTP_INVOKE,
  PLACEHOLDERS,
  TEMPLATE_NAMES,
  allStates,
  httpTasks,
  loadTemplate,
  renderTemplate,
  successors,
  type AslDefinition,
  type AslState,
  type HttpTaskParameters,
  type TemplateName,
} from '../deploy/stepfunctions/templates.ts'
import { isForbiddenHttpTaskHeader } from '../deploy/stepfunctions/local-http-task.ts'

// Static checks of the Step Functions templates: asl-validator (the schema, paths,
// ARNs, transitions) on the templates as written and as deployed, then the HTTP Task
// facts the templates must respect, and a walk of every path proving that each one
// that leaves the lease acquired gives it back.

// asl-validator 4 is CommonJS: module.exports = function validator(definition, opts?)
type AslValidator = (
  definition: unknown,
  opts?: { checkPaths: boolean; checkArn: boolean },
) => { isValid: boolean; errors: unknown[]; errorsText: (separator?: string) => string }
const aslValidator = createRequire(import.meta.url)('asl-validator') as AslValidator

const values = {
  ControlPlaneUrl: 'https://chroma-lease.example.com',
  ConnectionArn: 'arn:aws:events:eu-west-1:123456789012:connection/chroma-lease/0b5c7e7a-1111-2222-3333-444455556666',
}

const params = (s: AslState) => (s.Parameters ?? {}) as HttpTaskParameters
const endpointOf = (s: AslState) => params(s).ApiEndpoint ?? params(s)['ApiEndpoint.$'] ?? ''

/** The HTTP Task states, classified by what they call. */
function classify(def: AslDefinition) {
  const tasks = httpTasks(def)
  const by = (method: string, path: RegExp) => tasks.filter((r) => params(r.state).Method === method && path.test(endpointOf(r.state)))
  return {
    acquire: by('POST', /\/v1\/leases$/),
    poll: by('GET', /\/v1\/leases\/\{\}'/),
    release: by('DELETE', /\/v1\/leases\/\{\}'/),
    query: by('POST', /\/v1\/sessions\/\{\}\/query'/),
    all: tasks,
  }
}

for (const name of TEMPLATE_NAMES) {
  t.test(name, async (t) => {
    const raw = loadTemplate(name)
    const rendered = renderTemplate(name, values)

    t.test('asl-validator accepts the template as written and as deployed', async (t) => {
      for (const [what, def] of [['as written', raw], ['as deployed', rendered]] as const) {
        // The validator writes default QueryLanguage fields into what it checks: give it a copy.
        const strict = aslValidator(structuredClone(def), { checkPaths: true, checkArn: true })
        t.ok(strict.isValid, `${what}: ${strict.errorsText('; ')}`)
      }
    })

    t.test('placeholders are the documented ones and all get filled in', async (t) => {
      const text = JSON.stringify(raw)
      const found = new Set([...text.matchAll(/\$\{([A-Za-z]+)\}/g)].map((m) => m[1]))
      t.same([...found].sort(), [...PLACEHOLDERS].sort())
      t.notMatch(JSON.stringify(rendered), /\$\{/, 'nothing is left unsubstituted')
      t.throws(() => renderTemplate(name, { ...values, ControlPlaneUrl: 'http://cp.example.com' }), /https/)
      t.throws(() => renderTemplate(name, { ...values, ControlPlaneUrl: 'https://cp.example.com/' }), /trailing slash/)
      t.throws(() => renderTemplate(name, { ...values, ConnectionArn: 'not-an-arn' }), /connection ARN/)
      // values land in string values only: a quote in one cannot change the document
      const odd = renderTemplate(name, { ...values, ControlPlaneUrl: 'https://cp.example.com/a"b' })
      t.equal((odd.States.Configure!.Parameters as Record<string, string>).api, 'https://cp.example.com/a"b')
    })

    t.test('every HTTP Task respects the HTTP Task facts', async (t) => {
      const tasks = httpTasks(raw)
      t.ok(tasks.length >= 4)
      for (const { name: state, state: s } of tasks) {
        const p = params(s)
        t.equal(s.Resource, HTTP_INVOKE, `${state}: request-response only (no .waitForTaskToken form exists)`)
        t.equal(p.Authentication?.ConnectionArn, '${ConnectionArn}', `${state}: authorised by the connection`)
        t.ok(s.TimeoutSeconds !== undefined && s.TimeoutSeconds <= 60, `${state}: TimeoutSeconds within the 60 s quota`)
        const endpoint = endpointOf(s)
        t.ok(
          endpoint.startsWith('${ControlPlaneUrl}/') || endpoint.startsWith("States.Format('{}/v1/"),
          `${state}: calls the control plane only (${endpoint})`,
        )
        for (const h of Object.keys(p.Headers ?? {})) {
          t.notOk(isForbiddenHttpTaskHeader(h.replace(/\.\$$/, '')), `${state}: may set header ${h}`)
        }
        t.notOk(p.Transform, `${state}: plain JSON bodies`)
        // Only what later states need is kept: never the whole HTTP result (headers and all).
        t.ok(s.ResultSelector !== undefined || s.OutputPath === '$.ResponseBody', `${state}: keeps only the response body's needed parts`)
      }
    })

    t.test('acquire, poll, query and release are shaped as the API contract says', async (t) => {
      const c = classify(raw)
      t.equal(c.acquire.length, 1, 'one acquire')
      t.equal(c.poll.length, 1, 'one poll')
      t.equal(c.release.length, 2, 'one release on success, one after a failure')
      t.ok(c.query.length >= 1, 'queries')
      t.equal(c.all.length, c.acquire.length + c.poll.length + c.release.length + c.query.length, 'no other HTTP Task')

      const acquire = c.acquire[0]!.state
      t.equal(params(acquire).Headers?.['Idempotency-Key.$'], "States.Format('{}/{}', $$.StateMachine.Name, $$.Execution.Name)", 'Idempotency-Key from the execution (names of at most 80 characters each: under the 200 limit)')
      t.equal(params(acquire)['RequestBody.$'], '$.acquire')
      // waitSeconds is forced last into the acquire body: the input cannot raise it past 50
      const init = raw.States.Init!.Parameters as Record<string, Record<string, unknown>>
      t.same(init.leaseFixed, { waitSeconds: 50 })
      t.match((raw.States.Configure!.Parameters as Record<string, string>)['acquire.$'], /, \$\.leaseFixed, false\)$/)
      t.same(params(c.poll[0]!.state).QueryParameters, { waitSeconds: '50' })

      for (const q of c.query) {
        t.same(Object.keys(params(q.state).Headers ?? {}), ['x-chroma-token.$'], `${q.name}: the lease token travels as x-chroma-token`)
        t.equal(q.state.OutputPath, '$.ResponseBody')
      }
      // Retries: only where repeating is harmless
      t.ok(acquire.Retry?.length, 'acquire retries (safe: Idempotency-Key)')
      for (const r of c.release) t.same(r.state.Retry?.[0]?.ErrorEquals, ['States.ALL'], `${r.name}: release is idempotent, so every error is retried`)
    })

    t.test('every path that acquires a lease releases it', async (t) => {
      const top = raw.States
      const releases = new Set(classify(raw).release.filter((r) => r.parents.length === 0).map((r) => r.name))
      const acquire = classify(raw).acquire[0]!
      t.same(acquire.parents, [], 'acquire is a top-level state')
      // Acquire's own Catch may end the execution: nothing was acquired then.
      t.same(acquire.state.Catch?.map((c) => c.ErrorEquals), [['States.ALL']])

      // Every state that can fail after the acquire must Catch States.ALL.
      const after = reachable(top, acquire.state.Next!)
      for (const name of after) {
        const s = top[name]!
        if (['Task', 'Parallel', 'Map'].includes(s.Type)) {
          t.ok(s.Catch?.some((c) => c.ErrorEquals.includes('States.ALL')), `${name} catches States.ALL`)
        }
      }
      // Walk every path (Next, Choices, Default, Catch) from the acquire's Next: none may
      // reach an end of the execution before passing a release.
      const leaks: string[] = []
      const seen = new Set<string>()
      const walk = (name: string, path: string[]) => {
        if (releases.has(name) || seen.has(name)) return
        seen.add(name)
        const s = top[name]!
        if (s.Type === 'Fail' || s.Type === 'Succeed' || s.End) leaks.push([...path, name].join(' > '))
        for (const n of successors(s)) walk(n, [...path, name])
      }
      walk(acquire.state.Next!, [acquire.name])
      t.same(leaks, [], 'no path ends with the lease held')
      // ...and the releases themselves end the execution whatever happens to them.
      for (const r of releases) {
        t.ok(top[r]!.Catch?.some((c) => c.ErrorEquals.includes('States.ALL')), `${r}: a failed release still ends the execution`)
      }
      // Nested states (branches, iterations) after the acquire fail into their Parallel/Map, whose Catch releases.
      for (const ref of allStates(raw).filter((r) => r.parents.length > 0 && after.includes(r.parents[0]!))) {
        const parent = top[ref.parents[0]!]!
        t.ok(parent.Catch?.some((c) => releases.has(c.Next) || reachable(top, c.Next).some((n) => releases.has(n))), `${ref.name}: its ${ref.parents[0]} releases on failure`)
      }
    })

    t.test('state data stays small: answers replace queries, the session is polled with a bounded loop', async (t) => {
      const c = classify(raw)
      const fanOut = Object.entries(raw.States).find(([, s]) => s.Type === 'Parallel' || (s.Type === 'Map' && s.ItemProcessor?.States && Object.values(s.ItemProcessor.States).some((x) => x.Resource === HTTP_INVOKE)))
      t.ok(fanOut, 'a fan-out of queries')
      t.equal(fanOut![1].ResultPath, '$.queries', 'the answers overwrite the queries')
      const init = raw.States.Init!.Parameters as Record<string, Record<string, unknown>>
      const perAnswer = init.queryDefaults!.maxResultBytes as number
      const answers = name === 'lease-query' ? 2 : maxQueriesOf(raw)
      t.ok(perAnswer * answers <= 200 * 1024, `${answers} answers of at most ${perAnswer} bytes stay well under 256 KiB`)
      t.ok(c.poll.length === 1)
      const choice = raw.States['SessionReady?']!
      t.match(JSON.stringify(choice.Choices), /"NumericLessThan":\d+/, 'the poll loop has a bound')
      t.equal(raw.States.WaitForSession!.Type, 'Wait')
    })
  })
}

t.test('the two templates share their lease handling word for word', async (t) => {
  const a = loadTemplate('lease-query').States
  const b = loadTemplate('lease-map-query').States
  const shared = Object.keys(a).filter((k) => k in b && !['Init', 'Configure'].includes(k))
  t.ok(shared.length >= 12)
  const differing = shared.filter((k) => {
    const norm = (s: AslState) => JSON.stringify({ ...s, Next: s.Next === 'Query' || s.Next === 'QueryAll' ? 'QUERY' : s.Next, Choices: s.Choices?.map((c) => ({ ...c, Next: ['Query', 'QueryAll'].includes(c.Next) ? 'QUERY' : c.Next })) })
    return norm(a[k]!) !== norm(b[k]!)
  })
  t.same(differing, [])
})

function reachable(states: Record<string, AslState>, from: string): string[] {
  const seen = new Set<string>()
  const stack = [from]
  while (stack.length) {
    const n = stack.pop()!
    if (seen.has(n)) continue
    seen.add(n)
    stack.push(...successors(states[n]!))
  }
  return [...seen]
}

function maxQueriesOf(def: AslDefinition): number {
  const rule = def.States.CheckQueryCount!.Choices!.find((c) => 'NumericGreaterThan' in c)!
  return rule.NumericGreaterThan as number
}

export type { TemplateName }
