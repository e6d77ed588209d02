// Bundles the control plane into dist/server.js and the `chroma-lease` command into
// dist/cli.js (esbuild, well under a second), which `npm start` and bin/chroma-lease.js run
// with plain Node: no TypeScript loader in the running service, whose hooks thread alone
// costs ~30 MB of RSS, nor in the command, which starts in a fraction of a second.
// Dependencies stay in node_modules, except @chroma-lease/client (packages/client), which
// the command bundles from its TypeScript source. dist/inputs.json lists the sources, so
// bin/chroma-lease.js can tell a bundle older than them.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { build } from 'esbuild'

/** Every bare import stays external but the client package's, bundled from its source. */
const externalPackages = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => (args.path.startsWith('@chroma-lease/client') ? undefined : { path: args.path, external: true }))
  },
}

/**
 * Prisma's query compiler is WebAssembly that the generated client imports as one 2.2 MB
 * base64 string in a JavaScript module, and V8 then holds it twice for the life of the
 * process (the module's source text and the string itself: 4.4 MB of the idle heap). The
 * bundle instead compiles it from dist/prisma-query-compiler.wasm, written here from that
 * same module, and holds neither. The build fails if the generated client changes its form.
 */
const QUERY_COMPILER_BASE64 = 'node_modules/@prisma/client/runtime/query_compiler_small_bg.postgresql.wasm-base64.mjs'
const QUERY_COMPILER_WASM = 'prisma-query-compiler.wasm'
const prismaWasmFromFile = {
  name: 'prisma-wasm-from-file',
  setup(b) {
    b.onLoad({ filter: /src\/generated\/prisma\/internal\/class\.ts$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8')
      const inlined = /const \{ wasm \} = await import\("@prisma\/client\/runtime\/query_compiler_small_bg\.postgresql\.wasm-base64\.mjs"\)\s*return await decodeBase64AsWasm\(wasm\)/
      if (!inlined.test(source)) throw new Error(`${args.path} no longer loads the query compiler as ${QUERY_COMPILER_BASE64}: update scripts/build.mjs`)
      const fromFile = `const { readFile } = await import('node:fs/promises')\n    return new WebAssembly.Module(await readFile(new URL('./${QUERY_COMPILER_WASM}', import.meta.url)))`
      return { contents: source.replace(inlined, fromFile), loader: 'ts', resolveDir: dirname(args.path) }
    })
  },
}
const base64Module = await readFile(QUERY_COMPILER_BASE64, 'utf8')
const base64 = /^const wasm = "([A-Za-z0-9+/=]+)"/.exec(base64Module)?.[1]
if (!base64) throw new Error(`${QUERY_COMPILER_BASE64} does not start with the base64 string this build expects`)

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
await replace(`dist/${QUERY_COMPILER_WASM}`, Buffer.from(base64, 'base64'))
const isEntry = (file) => /\/(server|cli)\.js(\.map)?$/.test(file.path)
await Promise.all(result.outputFiles.filter((f) => !isEntry(f)).map((file) => replace(file.path, file.contents)))
await Promise.all(result.outputFiles.filter(isEntry).map((file) => replace(file.path, file.contents)))
await replace('dist/inputs.json', JSON.stringify(Object.keys(result.metafile.inputs).sort(), null, 1) + '\n')

// The session agent's bundle (dist/agent), which local sessions run as the session image does.
await import('./build-agent.mjs')
