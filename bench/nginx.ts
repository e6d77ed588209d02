import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freeLoopbackPort } from '../src/free-port.ts'

/** Where nginx is: on PATH, or where Debian's package puts it (sbin is not on every PATH). */
export function findNginx(): string | null {
  for (const candidate of ['nginx', '/usr/sbin/nginx']) {
    if (spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) return candidate
  }
  return null
}

export const NGINX_MISSING = 'nginx is not installed, so its column is left out (Debian: `apt-get install -y nginx`; the benchmark starts its own instance on a loopback port and never the system service)'

/**
 * nginx as a plain reverse proxy to `upstream` (http://host:port), as an operator would put
 * one in front of a session: one worker process (the control plane is one Node process too),
 * HTTP/1.1 with kept-alive upstream connections, no access log. Its own prefix directory
 * under `dir`: nothing of the system's nginx is read or written.
 */
export async function startNginx(binary: string, dir: string, upstream: string): Promise<{ url: string; pid: number; stop(): Promise<void> }> {
  await mkdir(join(dir, 'logs'), { recursive: true })
  const port = await freeLoopbackPort()
  const target = new URL(upstream)
  const conf = join(dir, 'nginx.conf')
  await writeFile(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'logs', 'error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'body')};
  proxy_temp_path ${join(dir, 'proxy')};
  fastcgi_temp_path ${join(dir, 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'uwsgi')};
  scgi_temp_path ${join(dir, 'scgi')};
  upstream session { server ${target.hostname}:${target.port}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://session;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
  )
  const child: ChildProcess = spawn(binary, ['-p', dir, '-c', conf, '-e', join(dir, 'logs', 'error.log')], { stdio: ['ignore', 'inherit', 'inherit'] })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode} (see ${join(dir, 'logs', 'error.log')})`)
    const up = await fetch(`${url}/api/v2/heartbeat`).then(() => true, () => false)
    if (up) break
    if (i > 100) throw new Error('nginx did not answer within 10 s')
    await sleep(100)
  }
  return {
    url,
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null) return
      child.kill('SIGQUIT')
      await once(child, 'exit')
    },
  }
}
