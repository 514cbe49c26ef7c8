// Starts a throwaway `redis-server` on a free loopback port: used by the tests, the benchmarks
// and `npm start`. Nothing is persisted; stop() kills it.
import { spawn, spawnSync } from 'node:child_process'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export function redisServerInstalled() {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

function answersPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    socket.setTimeout(500)
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (data) => {
      socket.destroy()
      // A server started with --requirepass answers -NOAUTH: it is up all the same.
      const reply = data.toString()
      resolve(reply.startsWith('+PONG') || reply.startsWith('-NOAUTH'))
    })
    socket.on('error', () => resolve(false))
    socket.on('timeout', () => {
      socket.destroy()
      resolve(false)
    })
  })
}

/**
 * Starts redis-server and resolves once it answers PING. `args` are extra redis-server
 * arguments, e.g. `['--requirepass', 'secret']` (kept across `restart()`).
 * @param {{ port?: number, args?: string[] }} [options]
 * @returns {Promise<{ port: number, url: string, pid: number, stop(): Promise<void>, restart(): Promise<void> }>}
 */
export async function startRedis({ port, args = [] } = {}) {
  port ??= await freePort()
  let child = null

  async function launch() {
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning', ...args],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    )
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.exited = exited
    for (let attempt = 0; attempt < 100; attempt++) {
      if (await answersPing(port)) return
      if (child.exitCode !== null) break
      await sleep(50)
    }
    throw new Error(`redis-server did not start on port ${port}`)
  }

  async function stop() {
    if (child === null || child.exitCode !== null) return
    child.kill('SIGKILL')
    await child.exited
  }

  await launch()
  return {
    port,
    url: `redis://127.0.0.1:${port}/`,
    /** The current redis-server process id (e.g. to SIGSTOP it). */
    get pid() {
      return child.pid
    },
    stop,
    async restart() {
      await stop()
      await launch()
    },
  }
}
