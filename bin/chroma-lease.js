#!/usr/bin/env node
// The `chroma-lease` command: runs the TypeScript CLI (src/cli/main.ts) through tsx,
// the way the rest of the project runs (`node --import tsx`), in this same process.
await import('tsx')
const { main } = await import('../src/cli/main.ts')
const code = await main(process.argv.slice(2))
if (code !== null) process.exitCode = code
