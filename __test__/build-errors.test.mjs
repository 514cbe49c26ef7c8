// build() with Redis verifies the connection, the credentials and every command the limiter
// needs, and fails within the connect timeout with a code naming the problem:
// - wrong or missing password, ACL user without a needed permission -> TRYPEMA_REDIS_AUTH
//   (messages never contain a password);
// - refused, silent or paused server -> TRYPEMA_REDIS;
// - settings Redis cannot represent (a window of 2^53 - 1 s) -> TRYPEMA_INVALID_WINDOW_SIZE.
// Also: the minimal ACL rule of the README is enough for everything the limiter does (every
// method, after SCRIPT FLUSH, after an outage), and none of its commands can be dropped.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { freePort, startRedis } from '../scripts/redis-server.mjs'
import { ALLOWED, codeError, privateRedis, unique, within } from './support.mjs'

const CONNECT_TIMEOUT_MS = 1000
/** What build() may take beyond connectTimeoutMs: its own 100 ms grace plus scheduling on a busy 2-core machine. */
const SLACK_MS = 500

const ADMIN_PASSWORD = `admin-${unique('')}`
/** The README's minimal ACL rule (key pattern for the default prefix `trypema`). */
const MINIMAL_COMMANDS = ['evalsha', 'eval', 'time', 'getrange', 'setrange', 'set', 'pexpire', 'del', 'ping']

let server
let admin
let port

before(async () => {
  privateRedis.check()
  if (privateRedis.skip) return
  server = await startRedis({ args: ['--requirepass', ADMIN_PASSWORD] })
  port = server.port
  admin = new Redis({ port, host: '127.0.0.1', password: ADMIN_PASSWORD, maxRetriesPerRequest: 1 })
})

after(async () => {
  admin?.disconnect()
  await server?.stop()
})

/** Runs build() and returns [error, elapsed ms]; fails if it takes more than 10 s. */
async function buildError(connection, configure = (builder) => builder) {
  const started = performance.now()
  try {
    const limiter = await within(10_000, configure(RateLimiter.builder(connection)).build(), 'build()')
    await limiter.close()
    return [null, performance.now() - started]
  } catch (error) {
    return [error, performance.now() - started]
  }
}

function assertCode(error, code, secrets = []) {
  assert.ok(error instanceof Error, `build() must reject, got ${error}`)
  assert.equal(error.code, code, error.message)
  assert.match(error.message, /\S/)
  for (const secret of secrets) assert.ok(!error.message.includes(secret), `the message reveals a password: ${error.message}`)
}

async function setUser(name, password, ...rules) {
  await admin.call('ACL', 'DELUSER', name)
  await admin.call('ACL', 'SETUSER', name, 'on', `>${password}`, ...rules)
}

const url = (user, password) => `redis://${user === null ? '' : encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/`

describe('credentials and permissions', { skip: privateRedis.skip }, () => {
  test('the right password builds a working limiter (control)', async () => {
    const limiter = await RateLimiter.builder(url(null, ADMIN_PASSWORD)).build()
    assert.deepEqual(await limiter.redis.absolute.inc(unique('ok'), 5), ALLOWED)
    await limiter.close()
  })

  test('a wrong password -> TRYPEMA_REDIS_AUTH within the connect timeout, without the password in the message', async () => {
    const wrong = `wrong-${unique('')}`
    const [error, took] = await buildError({ url: url(null, wrong), connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS_AUTH', [wrong, ADMIN_PASSWORD])
    assert.ok(took < CONNECT_TIMEOUT_MS + SLACK_MS, `took ${took} ms`)
  })

  test('no password for a server that requires one -> TRYPEMA_REDIS_AUTH', async () => {
    const [error, took] = await buildError({ url: `redis://127.0.0.1:${port}/`, connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS_AUTH', [ADMIN_PASSWORD])
    assert.ok(took < CONNECT_TIMEOUT_MS + SLACK_MS, `took ${took} ms`)
  })

  test('an ACL user with a wrong password -> TRYPEMA_REDIS_AUTH, neither password in the message', async () => {
    const password = `pw-${unique('')}`
    await setUser('wrongpw', password, '~*', '+@all')
    const wrong = `nope-${unique('')}`
    const [error] = await buildError({ url: url('wrongpw', wrong), connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS_AUTH', [wrong, password])
  })

  test('an ACL user that may not run SETRANGE (needed by the scripts) -> TRYPEMA_REDIS_AUTH', async () => {
    const password = `pw-${unique('')}`
    await setUser('limited', password, '~*', '+@all', '-setrange')
    const [error, took] = await buildError({ url: url('limited', password), connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS_AUTH', [password])
    assert.ok(took < CONNECT_TIMEOUT_MS + SLACK_MS, `took ${took} ms`)
  })

  test('an ACL user whose key pattern excludes the prefix -> TRYPEMA_REDIS_AUTH', async () => {
    const password = `pw-${unique('')}`
    await setUser('otherkeys', password, '~{other:*', '+@all')
    const [error] = await buildError({ url: url('otherkeys', password), connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS_AUTH', [password])
  })

  test('the minimal ACL rule is enough: every method, after SCRIPT FLUSH, and after an outage', async () => {
    const password = `pw-${unique('')}`
    await setUser('minimal', password, '~{trypema:*', ...MINIMAL_COMMANDS.map((name) => `+${name}`))
    await admin.script('FLUSH') // so that build() and the first calls need EVAL too
    const limiter = await RateLimiter.builder({ url: url('minimal', password), commandTimeoutMs: 1000 })
      .windowSizeSeconds(10)
      .build()
    try {
      for (const round of ['fresh', 'after SCRIPT FLUSH']) {
        if (round !== 'fresh') await admin.script('FLUSH')
        await everyMethod(limiter, round)
      }
      await recoversFromOutage(limiter, 'minimal', true)
    } finally {
      await limiter.close()
    }
  })

  for (const dropped of MINIMAL_COMMANDS) {
    test(`the minimal ACL rule without +${dropped} is refused by build() with TRYPEMA_REDIS_AUTH, or still works`, async () => {
      const user = `no${dropped}`
      const password = `pw-${unique('')}`
      await setUser(user, password, '~{trypema:*', ...MINIMAL_COMMANDS.filter((name) => name !== dropped).map((name) => `+${name}`))
      await admin.script('FLUSH')
      const [error] = await buildError({ url: url(user, password), connectTimeoutMs: CONNECT_TIMEOUT_MS, commandTimeoutMs: 1000 })
      if (error !== null) {
        assertCode(error, 'TRYPEMA_REDIS_AUTH', [password])
        return
      }
      // build() accepted the user: then the limiter must do everything without that command.
      const limiter = await RateLimiter.builder({ url: url(user, password), commandTimeoutMs: 1000 }).windowSizeSeconds(10).build()
      try {
        await everyMethod(limiter, `without ${dropped}`)
        await admin.script('FLUSH')
        await everyMethod(limiter, `without ${dropped}, after SCRIPT FLUSH`)
        await recoversFromOutage(limiter, user, true)
      } finally {
        await limiter.close()
      }
    })
  }
})

/** Every method of both Redis-backed providers succeeds. */
async function everyMethod(limiter, what) {
  const key = unique('acl')
  const calls = {
    'redis.absolute.inc': () => limiter.redis.absolute.inc(key, 5),
    'redis.absolute.isAllowed': () => limiter.redis.absolute.isAllowed(key),
    'redis.absolute.incWithQuota': () => limiter.redis.absolute.incWithQuota(key, 5, 2),
    'redis.absolute.get': () => limiter.redis.absolute.get(key, 5),
    'redis.absolute.refund': () => limiter.redis.absolute.refund(key, 1),
    'redis.absolute.reset': () => limiter.redis.absolute.reset(key),
    'redis.suppressed.inc': () => limiter.redis.suppressed.inc(key, 5),
    'redis.suppressed.getSuppressionFactor': () => limiter.redis.suppressed.getSuppressionFactor(key),
    'redis.suppressed.incWithQuota': () => limiter.redis.suppressed.incWithQuota(key, 5),
    'redis.suppressed.get': () => limiter.redis.suppressed.get(key, 5),
    'redis.suppressed.refund': () => limiter.redis.suppressed.refund(key, 1),
    'redis.suppressed.reset': () => limiter.redis.suppressed.reset(key),
    'hybrid.absolute.inc': () => limiter.hybrid.absolute.inc(`h${key}`, 5),
    'hybrid.absolute.incWithQuota': () => limiter.hybrid.absolute.incWithQuota(`h${key}`, 5),
    'hybrid.suppressed.inc': () => limiter.hybrid.suppressed.inc(`h${key}`, 5),
    'hybrid.absolute.refund': () => limiter.hybrid.absolute.refund(`h${key}`, 1),
  }
  const failures = []
  for (const [name, call] of Object.entries(calls)) {
    try {
      await call()
    } catch (error) {
      failures.push(`${name}: ${error.code} ${error.message}`)
    }
  }
  assert.deepEqual(failures, [], `${what}: calls failed`)
  assert.equal((await limiter.redis.absolute.get(key, 5)).remaining, 50)
}

/**
 * Drops the limiter's connections (CLIENT KILL USER) until a call fails, so that the circuit
 * breaker opens; then Redis is back at once, and calls must succeed again within 2 s.
 */
async function recoversFromOutage(limiter, user, expectRecovery) {
  let failed = null
  for (let attempt = 0; attempt < 20 && failed === null; attempt++) {
    await admin.call('CLIENT', 'KILL', 'USER', user)
    try {
      await limiter.redis.absolute.inc(unique('outage'), 100)
    } catch (error) {
      failed = error
    }
  }
  assert.ok(failed !== null, 'no call failed after the connection was killed')
  assert.equal(failed.code, 'TRYPEMA_REDIS', failed.message)
  const deadline = Date.now() + 2000
  let last = null
  while (Date.now() < deadline) {
    try {
      await limiter.redis.absolute.inc(unique('outage'), 100)
      last = null
      break
    } catch (error) {
      last = error
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  if (expectRecovery) {
    assert.equal(last, null, `still failing 2 s after Redis came back: ${last?.code} ${last?.message}`)
  }
}

describe('unreachable servers', () => {
  test('connection refused -> TRYPEMA_REDIS, within the connect timeout, without the password', async () => {
    const closedPort = await freePort()
    const secret = `s3cr3t-${unique('')}`
    const [error, took] = await buildError({ url: `redis://user:${secret}@127.0.0.1:${closedPort}/`, connectTimeoutMs: CONNECT_TIMEOUT_MS })
    assertCode(error, 'TRYPEMA_REDIS', [secret])
    assert.ok(took < CONNECT_TIMEOUT_MS + SLACK_MS, `took ${took} ms`)
  })

  test(`a silent server (accepts, never answers) -> TRYPEMA_REDIS within connectTimeoutMs + ${SLACK_MS} ms`, async () => {
    const sockets = new Set()
    const silent = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('data', () => {}) // read and ignore everything
      socket.on('error', () => {})
      socket.on('close', () => sockets.delete(socket))
    })
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    let connections = 0
    silent.on('connection', () => (connections += 1))
    try {
      for (const connectTimeoutMs of [300, CONNECT_TIMEOUT_MS]) {
        const [error, took] = await buildError({
          url: `redis://127.0.0.1:${silent.address().port}/`,
          connectTimeoutMs,
          commandTimeoutMs: 5000, // must not matter: the connect timeout bounds build()
        })
        assertCode(error, 'TRYPEMA_REDIS')
        assert.ok(took >= connectTimeoutMs - 50, `gave up after ${took} ms, before the timeout`)
        assert.ok(took < connectTimeoutMs + SLACK_MS, `took ${took} ms`)
      }
      assert.ok(connections >= 1, 'the builder did connect to the silent server')
      // The failed builds closed their connections.
      const deadline = Date.now() + 2000
      while (sockets.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      assert.equal(sockets.size, 0, 'connections left open by failed builds')
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })

  test('a paused redis-server (SIGSTOP) -> TRYPEMA_REDIS within the connect timeout', { skip: privateRedis.skip }, async () => {
    const paused = await startRedis()
    process.kill(paused.pid, 'SIGSTOP')
    try {
      const [error, took] = await buildError({ url: paused.url, connectTimeoutMs: CONNECT_TIMEOUT_MS })
      assertCode(error, 'TRYPEMA_REDIS')
      assert.ok(took < CONNECT_TIMEOUT_MS + SLACK_MS, `took ${took} ms`)
    } finally {
      process.kill(paused.pid, 'SIGCONT')
      await paused.stop()
    }
  })

  test('a malformed URL -> TRYPEMA_REDIS', async () => {
    for (const bad of ['not a url', '', 'redis://127.0.0.1:notaport/', 'http://127.0.0.1:1/', 'redis://']) {
      const [error] = await buildError(bad)
      assertCode(error, 'TRYPEMA_REDIS')
    }
  })
})

describe('settings Redis cannot represent', () => {
  test('a window of 2^53 - 1 s -> TRYPEMA_INVALID_WINDOW_SIZE, before connecting', async () => {
    for (const target of [server ? server.url : null, 'redis://127.0.0.1:1/'].filter(Boolean)) {
      const [error, took] = await buildError(target, (builder) => builder.windowSizeSeconds(2 ** 53 - 1))
      assertCode(error, 'TRYPEMA_INVALID_WINDOW_SIZE')
      assert.ok(took < 200, `took ${took} ms: the setting must be refused without connecting`)
    }
    const [localError] = await buildError(undefined, (builder) => builder.windowSizeSeconds(2 ** 53 - 1))
    assertCode(localError, 'TRYPEMA_INVALID_WINDOW_SIZE')
  })

  test('the largest window (10^9 s) builds and keeps its key for a bounded time', { skip: privateRedis.skip }, async () => {
    const limiter = await RateLimiter.builder(url(null, ADMIN_PASSWORD)).windowSizeSeconds(1e9).build()
    try {
      const key = unique('huge')
      assert.deepEqual(await limiter.redis.absolute.inc(key, 1e-8), ALLOWED) // capacity 10
      assert.equal((await limiter.redis.absolute.get(key, 1e-8)).remaining, 9)
      const pttl = await admin.pttl(`{trypema:${key}}:a`)
      assert.ok(pttl > 0 && pttl <= 1e12 + 1, `PTTL ${pttl}`)
    } finally {
      await limiter.close()
    }
  })
})
