// Bundles the control plane into dist/server.js (esbuild, well under a second), which
// `npm start` runs with plain Node: no TypeScript loader in the running service, whose
// hooks thread alone costs ~30 MB of RSS. Dependencies stay in node_modules.
import { build } from 'esbuild'

await build({
  entryPoints: ['src/server.ts'],
  outdir: 'dist',
  // Modules imported dynamically (the Fargate launcher and its AWS SDKs) stay in chunks of
  // their own, loaded only when used.
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
})
