import { randomBytes } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import { coalesce } from '../container/agent/coalesce.ts'

// The stage before the tar parser in every archive restore: bigger chunks, same bytes.

async function through(chunks: Buffer[], bytes: number): Promise<Buffer[]> {
  const out: Buffer[] = []
  await pipeline(Readable.from(chunks), coalesce(bytes), new Writable({ write: (c: Buffer, _e, done) => { out.push(c); done() } }))
  return out
}

t.test('joins small chunks into ones of at least the size, the last one smaller, bytes unchanged', async (t) => {
  const chunks = Array.from({ length: 100 }, (_, i) => randomBytes(1000 + i))
  const out = await through(chunks, 16_384)
  t.same(Buffer.concat(out), Buffer.concat(chunks), 'the same bytes in the same order')
  for (const c of out.slice(0, -1)) t.ok(c.length >= 16_384 && c.length < 16_384 + 1100, `a joined chunk of ${c.length} bytes`)
  t.ok(out.at(-1)!.length <= 16_384 + 1100, 'the rest at the end')
  t.equal(out.length, Math.floor(Buffer.concat(chunks).length / 16_384) + 1)
})

t.test('passes chunks at least the size as they are, and nothing for an empty stream', async (t) => {
  const big = [randomBytes(50_000), randomBytes(70_000)]
  const out = await through(big, 16_384)
  t.equal(out.length, 2)
  t.equal(out[0], big[0], 'not copied')
  t.same(await through([], 16_384), [])
})
