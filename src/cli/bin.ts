// The entry of the command's bundle (dist/cli.js, see scripts/build.mjs and bin/chroma-lease.js).
import { main } from './main.ts'

const code = await main(process.argv.slice(2))
if (code !== null) process.exitCode = code
