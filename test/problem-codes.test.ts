import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { FASTIFY_CODES } from '../src/plugins/problem-details.ts'
import { PROBLEM_CODES } from '../src/services/problem-codes.ts'

// Every problem code the API can answer is in the README's error table and in
// openapi.yaml's Problem schema, with the status the code throws it with (issue 17, item 6).
// The codes are read from the source: the errors.ts helpers, ProblemError and sendProblem
// with a literal code, and Fastify's client errors (FASTIFY_CODES).

const HELPER_STATUS: Record<string, number> = {
  badRequest: 400, unauthorized: 401, forbidden: 403, notFound: 404, conflict: 409, gone: 410, unprocessable: 422, badGateway: 502,
}
/** Calls whose code is not a literal, and the codes they can pass on. */
const PASSED_ON: Record<string, { codes: string[]; status: number; why: string }> = {
  'src/services/save-back.ts': {
    codes: ['session_stopping', 'session_not_ready', 'save_unsupported', 'agent_error'],
    status: 409,
    why: "the session agent's 409 codes on save (container/agent/main.ts), or agent_error when it gives none",
  },
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => join(e.parentPath, e.name))
    .filter((f) => !f.includes('/generated/'))
}

/** code → statuses, as thrown in src/. */
function thrownCodes(): Map<string, Set<number>> {
  const found = new Map<string, Set<number>>()
  const add = (code: string, status: number | null) => {
    const set = found.get(code) ?? new Set<number>()
    if (status !== null) set.add(status)
    found.set(code, set)
  }
  for (const file of sourceFiles('src')) {
    if (file === join('src', 'services', 'errors.ts')) continue
    const text = readFileSync(file, 'utf8')
    const helpers = Object.keys(HELPER_STATUS).join('|')
    for (const m of text.matchAll(new RegExp(`\\b(${helpers})\\(\\s*'([a-z_]+)'`, 'g'))) add(m[2]!, HELPER_STATUS[m[1]!]!)
    for (const m of text.matchAll(/new ProblemError\(\s*(\d+),\s*'([a-z_]+)'/g)) add(m[2]!, Number(m[1]))
    for (const m of text.matchAll(/sendProblem\([^,]+,\s*(\d+),\s*'([a-z_]+)'/g)) add(m[2]!, Number(m[1]))
    // A problem built as a literal object (the error handler's toProblem).
    for (const m of text.matchAll(/\{ status: (\d+), code: '([a-z_]+)'/g)) add(m[2]!, Number(m[1]))
    const nonLiteral = [...text.matchAll(new RegExp(`\\b(${helpers})\\((?!\\s*')`, 'g'))]
    if (nonLiteral.length) {
      const passed = PASSED_ON[file]
      if (!passed) throw new Error(`${file} throws a problem whose code is not a literal: list what it can pass on in PASSED_ON`)
      for (const code of passed.codes) add(code, passed.status)
    }
  }
  for (const code of Object.values(FASTIFY_CODES)) add(code, null)
  return found
}

const thrown = thrownCodes()
const catalogue = PROBLEM_CODES as Record<string, { status: readonly number[] }>

t.test('src/services/problem-codes.ts lists every code thrown in src/, and no other', async (t) => {
  t.ok(thrown.size > 30, `found ${thrown.size} codes`)
  t.same([...thrown.keys()].sort(), Object.keys(catalogue).sort())
  for (const [code, statuses] of thrown) {
    for (const status of statuses) t.ok(catalogue[code]?.status.includes(status), `${code} is thrown with ${status}, and the catalogue says so`)
  }
})

t.test("the README's error table lists every code with its statuses", async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('#### Errors'))
  const rows = new Map<string, number[]>()
  for (const m of section.matchAll(/^\| `([a-z_]+)` \| ([\d /]+) \|/gm)) rows.set(m[1]!, m[2]!.split('/').map((s) => Number(s.trim())))
  t.same([...rows.keys()].sort(), [...thrown.keys()].sort(), 'the same codes as src/')
  for (const [code, entry] of Object.entries(catalogue)) t.same(rows.get(code), [...entry.status], `${code}: the README's statuses`)
})

t.test("openapi.yaml's Problem schema enumerates every code", async (t) => {
  const spec = parse(readFileSync('openapi.yaml', 'utf8'))
  t.same([...spec.components.schemas.Problem.properties.code.enum].sort(), [...thrown.keys()].sort())
})
