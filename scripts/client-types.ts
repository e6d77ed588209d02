// The client package's API types, generated from openapi.yaml by openapi-typescript
// (offline: it reads the committed file). `npm run openapi` writes them beside the spec;
// test/client-package.test.ts fails when the committed types and openapi.yaml drift.
import { readFile, writeFile } from 'node:fs/promises'
import openapiTS, { astToString } from 'openapi-typescript'

export const specUrl = new URL('../openapi.yaml', import.meta.url)
export const typesUrl = new URL('../packages/client/src/openapi.ts', import.meta.url)

const HEADER = `// Generated from openapi.yaml by openapi-typescript (scripts/client-types.ts,
// run by \`npm run openapi\`). Do not edit: change the route schemas and regenerate.
`

/** The types module's text for the spec as it is on disk now. */
export async function generateClientTypes(): Promise<string> {
  const ast = await openapiTS(await readFile(specUrl, 'utf8'))
  return HEADER + astToString(ast)
}

export async function writeClientTypes(): Promise<void> {
  await writeFile(typesUrl, await generateClientTypes())
}

