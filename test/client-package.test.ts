import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { generateClientTypes, typesUrl } from '../scripts/client-types.ts'

// The @chroma-lease/client workspace package as its users get it: types generated from
// openapi.yaml (committed, and equal to a fresh generation), built by the root `npm ci`
// (postinstall), importable as plain ESM without this repo's TypeScript loader.

const run = promisify(execFile)

t.test('its API types are openapi.yaml, generated', async (t) => {
  t.equal(await readFile(typesUrl, 'utf8'), await generateClientTypes(), 'packages/client/src/openapi.ts is current (run `npm run openapi`)')
})

t.test('npm ci built it: plain Node imports the package by name', async (t) => {
  const pkg = JSON.parse(await readFile('packages/client/package.json', 'utf8'))
  t.match(pkg, { name: '@chroma-lease/client', type: 'module' })
  const root = JSON.parse(await readFile('package.json', 'utf8'))
  t.ok(root.workspaces.includes('packages/client'), 'a workspace of the repo')
  // No loader and no custom condition: the package's default export, dist/index.js.
  const script = `
    const m = await import('@chroma-lease/client')
    const client = new m.ChromaLeaseClient({ url: 'http://127.0.0.1:9', retry: { retries: 0 } })
    const err = await client.getLease('00000000-0000-4000-8000-000000000000').catch((e) => e)
    console.log(JSON.stringify({ exports: Object.keys(m).sort(), error: err instanceof m.ChromaLeaseError, code: err.code, dispose: typeof m.Lease.prototype[Symbol.asyncDispose] }))
  `
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { env: { PATH: process.env.PATH } })
  t.same(JSON.parse(stdout), { exports: ['ChromaLeaseClient', 'ChromaLeaseError', 'Lease', 'unwrap'], error: true, code: 'unreachable', dispose: 'function' })
  const types = await readFile('packages/client/dist/index.d.ts', 'utf8')
  t.match(types, /ChromaLeaseClient/, 'with its declarations')
})
