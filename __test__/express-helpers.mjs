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

/**
 * The Redis the tests share: TRYPEMA_TEST_REDIS_URL when set, else a private redis-server.
 * Without either, this throws (the test fails with a message rather than being skipped).
 * `stop()` only stops a server this function started.
 */
export async function sharedRedis() {
  const url = process.env.TRYPEMA_TEST_REDIS_URL
  if (url) return { url, stop: async () => {} }
  const { startRedis, redisServerInstalled } = await import('../scripts/redis-server.mjs')
  if (!redisServerInstalled()) {
    throw new Error('these tests need Redis: set TRYPEMA_TEST_REDIS_URL=redis://host:port/ or install redis-server')
  }
  return startRedis()
}

/**
 * A redis-server of the test's own, for tests that stop and restart it. Throws with a message
 * when redis-server is not installed.
 */
export async function privateRedis() {
  const { startRedis, redisServerInstalled } = await import('../scripts/redis-server.mjs')
  if (!redisServerInstalled()) {
    throw new Error('this test stops and restarts Redis, so it needs redis-server installed (TRYPEMA_TEST_REDIS_URL is not enough)')
  }
  return startRedis()
}

/** Records unhandled rejections until `stop()`, which returns them (after letting pending ones surface). */
export function watchUnhandledRejections() {
  const seen = []
  const listener = (reason) => seen.push(reason)
  process.on('unhandledRejection', listener)
  return {
    async stop() {
      // Unhandled rejections are reported after the microtask queue drains: give them two turns.
      await new Promise((resolve) => setImmediate(resolve))
      await new Promise((resolve) => setImmediate(resolve))
      process.removeListener('unhandledRejection', listener)
      return seen
    },
  }
}

/** Resolves once `check()` resolves truthy; rejects after `timeoutMs`. For effects that land after a response. */
export async function eventually(check, { timeoutMs = 3000, intervalMs = 10, message = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    last = await check()
    if (last) return last
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${message}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/** The parameters of one item of a structured-field list header, by policy name. */
export function rateLimitItem(header, name = 'default') {
  if (header === null) return null
  for (const item of header.split(/,\s*/)) {
    const [label, ...params] = item.split(';')
    if (label !== `"${name}"`) continue
    return Object.fromEntries(params.map((param) => {
      const [k, v] = param.trim().split('=')
      return [k, Number(v)]
    }))
  }
  return null
}
