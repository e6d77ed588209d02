#!/usr/bin/env node
// The `chroma-lease` command: runs the esbuild bundle of src/cli (dist/cli.js, built by
// scripts/build.mjs: `npm run build`, `npm start`, the image build) with plain Node, no
// TypeScript loader, so it starts in a fraction of a second. When the bundle is missing or
// older than a source it was built from (a checkout that changed), it is rebuilt first.
import { readFileSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const bundle = `${root}dist/cli.js`

function stale() {
  let built
  try {
    built = statSync(bundle).mtimeMs
  } catch {
    return true
  }
  let inputs
  try {
    inputs = JSON.parse(readFileSync(`${root}dist/inputs.json`, 'utf8'))
  } catch {
    return true
  }
  // A source that is gone (an image without the sources) cannot make the bundle stale.
  return inputs.some((input) => (statSync(`${root}${input}`, { throwIfNoEntry: false })?.mtimeMs ?? 0) > built)
}

if (stale()) {
  const cwd = process.cwd()
  try {
    process.chdir(root)
    await import('../scripts/build.mjs')
  } catch (err) {
    process.stderr.write(`chroma-lease: could not rebuild dist/cli.js (${err.message}); running the bundle as it is\n`)
  } finally {
    process.chdir(cwd)
  }
}
await import(bundle)
