// The session image's HEALTHCHECK: the agent's GET /_agent/health on the session port, which
// needs no token (the check holds none: the session's secrets never reach the environment).
// The agent answers 200 while Chroma's heartbeat answers, and while it has Chroma down on
// purpose (restoring, starting, saving, stopping), so a long restore or save is not "unhealthy".
const port = process.env.CHROMA_PORT ?? '8000'
const res = await fetch(`http://127.0.0.1:${port}/_agent/health`, { signal: AbortSignal.timeout(4_000) }).catch(() => null)
process.exit(res?.ok ? 0 : 1)
