// Builds the session agent as the session image runs it (container/Dockerfile):
//   node scripts/build-agent.mjs OUT_DIR
// OUT_DIR/agent.mjs          container/agent/main.ts and its dependencies in one ES module
// OUT_DIR/chroma-server.cjs  the Chroma server runner, next to it (the agent finds it there)
// OUT_DIR/healthcheck.mjs    the image's HEALTHCHECK
// OUT_DIR/package.json       the one dependency left out of the bundle: the pinned native
//                            Chroma binding, at the version this repository pins
// test/image.test.ts runs this script and the built agent, as the image does.
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const repo = fileURLToPath(new URL('..', import.meta.url))
const out = resolve(process.argv[2] ?? join(repo, 'dist', 'agent'))
const BINDING = 'chromadb-js-bindings-linux-x64-gnu'

await mkdir(out, { recursive: true })
await build({
  entryPoints: [join(repo, 'container/agent/main.ts')],
  outfile: join(out, 'agent.mjs'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  // Bundled CommonJS dependencies (the AWS SDK, tar) call require() for Node's built-ins.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
  external: [BINDING],
  legalComments: 'none',
  logLevel: 'warning',
})
await copyFile(join(repo, 'container/agent/chroma-server.cjs'), join(out, 'chroma-server.cjs'))
await copyFile(join(repo, 'container/healthcheck.mjs'), join(out, 'healthcheck.mjs'))
const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8'))
await writeFile(
  join(out, 'package.json'),
  JSON.stringify({ name: 'chroma-lease-session-agent', private: true, type: 'module', dependencies: { [BINDING]: pkg.dependencies[BINDING] } }, null, 2) + '\n',
)
console.log(`session agent built in ${out}`)
