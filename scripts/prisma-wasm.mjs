// The esbuild plugin with which bundles load Prisma's query compiler from a .wasm file
// (scripts/build.mjs; bench/memory.ts bundles its Prisma group with it too).
import { readFile } from 'node:fs/promises'
import { dirname } from 'node:path'

/**
 * Prisma's query compiler is WebAssembly that the generated client imports as one 2.2 MB
 * base64 string in a JavaScript module, and V8 then holds it twice for the life of the
 * process (the module's source text and the string itself: 4.4 MB of the idle heap). A
 * bundle built with this plugin compiles it from QUERY_COMPILER_WASM beside the bundle
 * (queryCompilerWasm() gives its bytes, from that same module) and holds neither. The
 * build fails if the generated client stops loading the compiler that way.
 */
const QUERY_COMPILER_BASE64 = new URL('../node_modules/@prisma/client/runtime/query_compiler_small_bg.postgresql.wasm-base64.mjs', import.meta.url)
export const QUERY_COMPILER_WASM = 'prisma-query-compiler.wasm'

export const prismaWasmFromFile = {
  name: 'prisma-wasm-from-file',
  setup(b) {
    b.onLoad({ filter: /src\/generated\/prisma\/internal\/class\.ts$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8')
      const inlined = /const \{ wasm \} = await import\("@prisma\/client\/runtime\/query_compiler_small_bg\.postgresql\.wasm-base64\.mjs"\)\s*return await decodeBase64AsWasm\(wasm\)/
      if (!inlined.test(source)) throw new Error(`${args.path} no longer loads the query compiler from ${QUERY_COMPILER_BASE64.pathname}: update scripts/prisma-wasm.mjs`)
      const fromFile = `const { readFile } = await import('node:fs/promises')\n    return new WebAssembly.Module(await readFile(new URL('./${QUERY_COMPILER_WASM}', import.meta.url)))`
      return { contents: source.replace(inlined, fromFile), loader: 'ts', resolveDir: dirname(args.path) }
    })
  },
}

/** The query compiler's bytes, to be written as QUERY_COMPILER_WASM beside a bundle built with prismaWasmFromFile. */
export async function queryCompilerWasm() {
  const base64 = /^const wasm = "([A-Za-z0-9+/=]+)"/.exec(await readFile(QUERY_COMPILER_BASE64, 'utf8'))?.[1]
  if (!base64) throw new Error(`${QUERY_COMPILER_BASE64.pathname} does not start with the base64 string scripts/prisma-wasm.mjs expects`)
  return Buffer.from(base64, 'base64')
}
