// "Silent server" fixtures for the timeout tests (issue 15): Redis endpoints that accept
// connections and then never answer, the failure a command timeout exists for. A refused or
// killed server fails a call at once and proves nothing about timeouts.
//
// - startSilentServer(): a TCP listener that accepts every connection and never writes a byte.
// - startSilencingProxy(targetPort): a TCP proxy in front of a real redis-server. It forwards
//   both ways until `silence()`; from then on it swallows every byte in both directions (and
//   new connections are accepted and swallowed too), while keeping every socket open, so the
//   client sees a live connection that has stopped answering. `restore()` ends the silence the
//   way a network recovers from a partition: it resets the silenced connections (their
//   request/reply streams are out of step) and forwards new ones again.
//
// Real redis-servers stopped with SIGSTOP or held with CLIENT PAUSE are the other two kinds of
// silence; the tests start them with scripts/redis-server.mjs.
import net from 'node:net'

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve(server.address().port)
    })
  })
}

function closeServer(server, sockets) {
  for (const socket of sockets) socket.destroy()
  sockets.clear()
  return new Promise((resolve) => server.close(() => resolve()))
}

/**
 * A listener that accepts and never answers.
 * @returns {Promise<{ port: number, url: string, readonly connections: number, readonly open: number, close(): Promise<void> }>}
 */
export async function startSilentServer() {
  const sockets = new Set()
  let connections = 0
  const server = net.createServer((socket) => {
    connections += 1
    sockets.add(socket)
    socket.on('data', () => {}) // read and drop, so the client's writes never block
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
  })
  const port = await listen(server)
  return {
    port,
    url: `redis://127.0.0.1:${port}/`,
    get connections() {
      return connections
    },
    /** Connections currently open. */
    get open() {
      return sockets.size
    },
    close: () => closeServer(server, sockets),
  }
}

/**
 * A proxy to the redis-server on `targetPort` that can be made silent.
 * @returns {Promise<{ port: number, url: string, readonly silenced: boolean, silence(): void, restore(): void, close(): Promise<void> }>}
 */
export async function startSilencingProxy(targetPort) {
  const sockets = new Set()
  const clients = new Set()
  /** Client sockets accepted or silenced while silent: reset by restore(). */
  const silencedClients = new Set()
  let silent = false
  const server = net.createServer((client) => {
    sockets.add(client)
    clients.add(client)
    client.on('error', () => {})
    client.on('close', () => {
      sockets.delete(client)
      clients.delete(client)
      silencedClients.delete(client)
    })
    if (silent) {
      silencedClients.add(client)
      client.on('data', () => {})
      return
    }
    client.pause()
    const upstream = net.connect({ port: targetPort, host: '127.0.0.1' })
    sockets.add(upstream)
    upstream.on('error', () => client.destroy())
    upstream.on('close', () => {
      sockets.delete(upstream)
      if (!silencedClients.has(client)) client.destroy()
    })
    client.on('close', () => upstream.destroy())
    upstream.on('connect', () => client.resume())
    // Forwarding checks the flag per chunk: once silent, nothing passes either way.
    client.on('data', (chunk) => {
      if (silent) silencedClients.add(client)
      else upstream.write(chunk)
    })
    upstream.on('data', (chunk) => {
      if (silent) silencedClients.add(client)
      else client.write(chunk)
    })
  })
  const port = await listen(server)
  return {
    port,
    url: `redis://127.0.0.1:${port}/`,
    get silenced() {
      return silent
    },
    silence() {
      silent = true
      // Every client open now is part of the silence (even one that sends nothing more).
      for (const client of clients) silencedClients.add(client)
    },
    restore() {
      silent = false
      for (const client of silencedClients) client.destroy()
      silencedClients.clear()
    },
    close: () => closeServer(server, sockets),
  }
}
