import { spawnSync } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { cpus, loadavg, totalmem } from 'node:os'

/** Replaces the section between `<!-- bench:NAME begin -->` and its end marker in BENCHMARKS.md (appended if absent). */
export async function writeSection(name: string, text: string): Promise<void> {
  const path = new URL('../BENCHMARKS.md', import.meta.url)
  const current = await readFile(path, 'utf8').catch(() => '# Benchmarks\n')
  const begin = `<!-- bench:${name} begin -->`
  const end = `<!-- bench:${name} end -->`
  const section = `${begin}\n${text}\n${end}`
  const next = current.includes(begin) ? current.replace(new RegExp(`${begin}[\\s\\S]*?${end}`), () => section) : `${current.trimEnd()}\n\n${section}\n`
  await writeFile(path, next)
}

/** The checkout as it is now: take it when a bench builds what it measures, so later commits do not relabel the run. */
export function sourceState(): { commit: string; dirty: boolean; at: Date } {
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).stdout.trim() !== ''
  return { commit, dirty, at: new Date() }
}

/** When, at which commit, on what, and how loaded the machine was (it is shared). `source`: as the run started (default: now). */
export function provenance(source = sourceState()): string {
  const { commit, dirty, at } = source
  return `Measured ${at.toISOString().slice(0, 16).replace('T', ' ')} UTC at commit \`${commit}\`${dirty ? ' (with uncommitted changes)' : ''} on ${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}; load average ${loadavg()[0]!.toFixed(1)} at the end.`
}
