import { once } from 'node:events'
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net'

/**
 * A loopback TCP proxy in front of Postgres. The replicas connect through it, so the
 * chaos runner can cut every open connection at once (both sides reset, as a NAT or
 * load balancer dropping its table would) while Postgres itself keeps running.
 */
export class TcpProxy {
  private server: Server | null = null
  private readonly pairs = new Set<[Socket, Socket]>()

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async listen(): Promise<number> {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, this.targetHost)
      const pair: [Socket, Socket] = [client, upstream]
      this.pairs.add(pair)
      const end = () => {
        this.pairs.delete(pair)
        client.destroy()
        upstream.destroy()
      }
      client.on('error', end).on('close', end)
      upstream.on('error', end).on('close', end)
      client.pipe(upstream)
      upstream.pipe(client)
    })
    this.server.listen(0, '127.0.0.1')
    await once(this.server, 'listening')
    return (this.server.address() as AddressInfo).port
  }

  /** Resets every open connection; returns how many were cut. New connections are accepted at once. */
  cutAll(): number {
    const n = this.pairs.size
    for (const [client, upstream] of this.pairs) {
      client.resetAndDestroy()
      upstream.resetAndDestroy()
    }
    this.pairs.clear()
    return n
  }

  async close(): Promise<void> {
    this.cutAll()
    if (!this.server) return
    this.server.close()
    await once(this.server, 'close')
  }
}
