// The session image's HEALTHCHECK: Chroma's heartbeat, through the agent's front on the
// session port, with the session token (the only way in). While the agent has Chroma
// down on purpose (restoring, starting, saving, stopping) the heartbeat answers 503;
// the agent's own status then decides, so a long restore or save is not "unhealthy".
const port = process.env.CHROMA_PORT ?? '8000'
const headers = { 'x-chroma-token': process.env.SESSION_TOKEN ?? '' }
const get = (path) => fetch(`http://127.0.0.1:${port}${path}`, { headers, signal: AbortSignal.timeout(2_500) }).catch(() => null)

const heartbeat = await get('/api/v2/heartbeat')
if (heartbeat?.ok) process.exit(0)
const status = heartbeat?.status === 503 ? await get('/_agent/status') : null
const phase = status?.ok ? (await status.json()).phase : null
process.exit(['restoring', 'starting', 'saving', 'stopping'].includes(phase) ? 0 : 1)
