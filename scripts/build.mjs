// Bundles the control plane into dist/server.js and the `chroma-lease` command into
// dist/cli.js (esbuild, well under a second), which `npm start` and bin/chroma-lease.js run
// with plain Node: no TypeScript loader in the running service, whose hooks thread alone
// costs ~30 MB of RSS, nor in the command, which starts in a fraction of a second.
// Dependencies stay in node_modules, except @chroma-lease/client (packages/client), which
// the command bundles from its TypeScript source. dist/inputs.json lists the sources, so
// bin/chroma-lease.js can tell a bundle older than them.
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { build } from 'esbuild'
import { prismaWasmFromFile, queryCompilerWasm, QUERY_COMPILER_WASM } from './prisma-wasm.mjs'

/** Every bare import stays external but the client package's, bundled from its source. */
const externalPackages = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => (args.path.startsWith('@chroma-lease/client') ? undefined : { path: args.path, external: true }))
  },
}

const result = await build({
  entryPoints: { server: 'src/server.ts', cli: 'src/cli/bin.ts' },
  outdir: 'dist',
  // Modules imported dynamically (the Fargate launcher and its AWS SDKs, the server for
  // `chroma-lease serve`) stay in chunks of their own, loaded only when used.
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  conditions: ['chroma-lease-source'],
  plugins: [externalPackages, prismaWasmFromFile],
  sourcemap: true,
  metafile: true,
  write: false,
  logLevel: 'warning',
})
// Each file is written beside its place and renamed into it, so a process starting the
// bundle while another build runs (tests, `npm start`, the command rebuilding itself) never
// reads a half-written file.
const replace = async (path, contents) => {
  await mkdir(dirname(path), { recursive: true })
  const temporary = `${path}.${process.pid}.tmp`
  await writeFile(temporary, contents)
  await rename(temporary, path)
}
// Chunks first (and the query compiler they load), then the entries that import them.
await replace(`dist/${QUERY_COMPILER_WASM}`, await queryCompilerWasm())
const isEntry = (file) => /\/(server|cli)\.js(\.map)?$/.test(file.path)
await Promise.all(result.outputFiles.filter((f) => !isEntry(f)).map((file) => replace(file.path, file.contents)))
await Promise.all(result.outputFiles.filter(isEntry).map((file) => replace(file.path, file.contents)))
await replace('dist/inputs.json', JSON.stringify(Object.keys(result.metafile.inputs).sort(), null, 1) + '\n')

// The session agent's bundle (dist/agent), which local sessions run as the session image does.
await import('./build-agent.mjs')
