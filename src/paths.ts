import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The project's root (the directory of package.json). Files the service reads at run
 * time (migrations, the session agent) are found from here, so the same code works
 * from src/ under tsx and from the dist/ bundle that `npm start` runs.
 */
export const PROJECT_ROOT = findRoot(dirname(fileURLToPath(import.meta.url)))

export const projectPath = (...segments: string[]) => join(PROJECT_ROOT, ...segments)

function findRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'prisma', 'migrations'))) return dir
    if (dirname(dir) === dir) throw new Error(`cannot find the chroma-lease project root above ${from}`)
  }
}
