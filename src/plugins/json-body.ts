import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { badRequest } from '../services/errors.ts'

/**
 * JSON bodies, parsed by Fastify's own parser (which refuses prototype poisoning), with
 * errors that say what to fix: where a body stopped being JSON (line and column), or that
 * it is empty. text/plain is not accepted: the API takes JSON only, so a body sent as
 * text is 415 unsupported_media_type, not a confusing "body must be object".
 */
export default fp(async function jsonBody(app: FastifyInstance) {
  const parse = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser(['application/json', 'text/plain'])
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    parse(request, body as string, (err, value) => {
      if (!err) return done(null, value)
      done(badRequest('invalid_json', describeJsonError(body as string, err)), undefined)
    })
  })
})

const SEND_JSON = 'send a JSON object with content-type: application/json'

export function describeJsonError(body: string, err: Error): string {
  if (body.trim() === '') return `the body is empty: ${SEND_JSON}`
  const offset = jsonErrorOffset(body)
  if (offset === null) return `the body is refused as JSON: ${err.message}`
  const before = body.slice(0, offset)
  const line = before.split('\n').length
  const column = offset - before.lastIndexOf('\n')
  const near = JSON.stringify(body.slice(Math.max(0, offset - 20), offset + 20))
  const found = offset < body.length ? `unexpected ${JSON.stringify(body[offset])}` : 'it ends too early'
  return `the body is not valid JSON: at line ${line}, column ${column} (offset ${offset}), ${found}, near ${near}`
}

/** The offset of the first character where `text` stops being JSON, or null when it is JSON. */
export function jsonErrorOffset(text: string): number | null {
  let i = 0
  class Stop {
    constructor(readonly at: number) {}
  }
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++
  }
  const expect = (c: string) => {
    if (text[i] !== c) throw new Stop(i)
    i++
  }
  const literal = (word: string) => {
    for (const c of word) expect(c)
  }
  const string = () => {
    expect('"')
    while (i < text.length && text[i] !== '"') {
      const c = text.charCodeAt(i)
      if (c < 0x20) throw new Stop(i)
      if (text[i] === '\\') {
        i++
        if (text[i] === 'u') {
          for (let k = 1; k <= 4; k++) if (!/[0-9a-fA-F]/.test(text[i + k] ?? '')) throw new Stop(i + k)
          i += 5
          continue
        }
        if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) throw new Stop(i)
      }
      i++
    }
    expect('"')
  }
  const number = () => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i))
    if (!m || m[0] === '' || m[0] === '-') throw new Stop(i + (m?.[0].length ?? 0))
    i += m[0].length
  }
  const value = (): void => {
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      ws()
      if (text[i] === '}') return void i++
      for (;;) {
        ws()
        string()
        ws()
        expect(':')
        value()
        ws()
        if (text[i] === ',') i++
        else return expect('}')
      }
    }
    if (c === '[') {
      i++
      ws()
      if (text[i] === ']') return void i++
      for (;;) {
        value()
        ws()
        if (text[i] === ',') i++
        else return expect(']')
      }
    }
    if (c === '"') return string()
    if (c === 't') return literal('true')
    if (c === 'f') return literal('false')
    if (c === 'n') return literal('null')
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return number()
    throw new Stop(i)
  }
  try {
    value()
    ws()
    return i < text.length ? i : null
  } catch (err) {
    if (err instanceof Stop) return err.at
    throw err
  }
}
