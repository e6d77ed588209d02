// Builds the session agent as the session image runs it (container/Dockerfile), and as the
// process launcher runs it for local sessions (src/services/launchers/agent-bundle.ts):
//   node scripts/build-agent.mjs OUT_DIR          (default dist/agent)
// OUT_DIR/agent.mjs          container/agent/main.ts and its dependencies in one ES module
// OUT_DIR/chroma-server.cjs  the Chroma server runner, next to it (the agent finds it there)
// OUT_DIR/healthcheck.mjs    the image's HEALTHCHECK
// OUT_DIR/package.json       the one dependency left out of the bundle: the pinned native
//                            Chroma binding, at the version this repository pins
// OUT_DIR/inputs.json        the sources it was built from (to tell a bundle older than them)
// Every file is written beside its place and renamed into it, so an agent starting while
// another build runs (parallel tests, a control plane rebuilding on demand) never reads a
// half-written file. test/image.test.ts runs this script and the built agent, as the image does.
import { copyFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const repo = fileURLToPath(new URL('..', import.meta.url))
// OUT_DIR only when run as a script: imported (scripts/build.mjs, itself run by the CLI's
// rebuild), process.argv is the caller's, and `chroma-lease --help` once built into ./--help.
const direct = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)
const arg = direct ? process.argv[2] : undefined
if (arg?.startsWith('-')) {
  console.error('usage: node scripts/build-agent.mjs [OUT_DIR]   (default dist/agent)')
  process.exit(arg === '--help' || arg === '-h' ? 0 : 2)
}
const out = resolve(arg ?? join(repo, 'dist', 'agent'))
const BINDING = 'chromadb-js-bindings-linux-x64-gnu'

await mkdir(out, { recursive: true })
const replace = async (name, write) => {
  const temporary = join(out, `.${name}.${process.pid}.tmp`)
  await write(temporary)
  await rename(temporary, join(out, name))
}
const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8'))
await replace('package.json', (path) =>
  writeFile(path, JSON.stringify({ name: 'chroma-lease-session-agent', private: true, type: 'module', dependencies: { [BINDING]: pkg.dependencies[BINDING] } }, null, 2) + '\n'),
)
await replace('chroma-server.cjs', (path) => copyFile(join(repo, 'container/agent/chroma-server.cjs'), path))
await replace('healthcheck.mjs', (path) => copyFile(join(repo, 'container/healthcheck.mjs'), path))
const result = await build({
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
  metafile: true,
  write: false,
})
await replace('agent.mjs', (path) => writeFile(path, result.outputFiles[0].contents))
// Paths relative to the repository (esbuild's are relative to the working directory).
const inputs = [...Object.keys(result.metafile.inputs).map((p) => resolve(p).slice(repo.length)), 'container/agent/chroma-server.cjs'].sort()
await replace('inputs.json', (path) => writeFile(path, JSON.stringify(inputs, null, 1) + '\n'))
console.log(`session agent built in ${out}`)
