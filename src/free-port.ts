import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'

/**
 * A loopback port that was free a moment ago. Whoever binds it next may race another
 * process for it; callers treat "address in use" as a failed start, not a hang.
 */
export async function freeLoopbackPort(host = '127.0.0.1'): Promise<number> {
  const server = createServer()
  server.listen(0, host)
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}
