// Shared by the express*.test.mjs files (not a test file itself).
import { once } from 'node:events'

/** Listens on a free loopback port; `close()` also drops fetch's keep-alive connections. */
export async function serve(app) {
  const server = app.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const base = `http://127.0.0.1:${server.address().port}`
  return {
    base,
    url: (path) => `${base}${path}`,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

/** fetch() that also reads the body, so the connection is free for the next request. */
export async function get(url, headers = {}) {
  const response = await fetch(url, { headers })
  const text = await response.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: response.status, headers: response.headers, text, json }
}

let serial = 0
/** A Redis key prefix no other limiter in this run uses. */
export function freshPrefix(label = 'x') {
  serial += 1
  return `express-${label}-${process.pid}-${serial}`
}
