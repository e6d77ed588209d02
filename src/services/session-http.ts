import { Client, type Dispatcher } from 'undici'

/**
 * One HTTP request to a session's address on a connection of its own, closed with the
 * answer, for the calls made once a pass or a minute to each of thousands of sessions
 * (agent confirmations and status, readiness checks). Through undici's global Agent such
 * calls left a pool per session origin behind even with `reset` (each pool ~16 KB of
 * queue plus its clients): a heap snapshot of a replica at 5,000 sessions found 5,000
 * pools holding 112 of its 166 MB (BENCHMARKS.md, At scale). A Client of its own is gone
 * with the call whatever the Agent's bookkeeping does.
 */
export async function requestOnce(
  url: string,
  opts: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string; timeoutMs: number },
): Promise<{ statusCode: number; text: string }> {
  const { origin, pathname, search } = new URL(url)
  const client = new Client(origin, { headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs })
  try {
    const res: Dispatcher.ResponseData = await client.request({ path: pathname + search, method: opts.method, headers: opts.headers, body: opts.body, reset: true })
    return { statusCode: res.statusCode, text: await res.body.text() }
  } finally {
    await client.destroy()
  }
}
