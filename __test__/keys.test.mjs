// Keys: any well-formed string of 1–255 UTF-8 bytes is a key for every provider — ':', '{' and
// '}' included, so `req.ip` works for IPv4, IPv6 and IPv4-mapped addresses — and distinct
// strings never share a limit. In Redis a key is stored as exactly `{<prefix>:<key>}:a`
// (absolute) / `:s` (suppressed), the names the Rust crate writes (crates/trypema/src/redis:
// entity_key), so a Node and a Rust service on one Redis and prefix share one limit. A string
// with a lone UTF-16 surrogate is a TypeError and never merges with its U+FFFD spelling.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { ALLOWED, globEscape, scanAll, sharedRedis, typeError, unique } from './support.mjs'

let rl
let client
let prefix

before(async () => {
  sharedRedis.check()
  if (sharedRedis.skip) return
  prefix = unique('keys')
  rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(10).redisPrefix(prefix).build()
  client = new Redis(sharedRedis.url, { maxRetriesPerRequest: 1 })
})

after(async () => {
  await rl?.close()
  client?.disconnect()
})

const skip = sharedRedis.skip

/** Keys that a naive `prefix:key` layout, hash tags or separators could confuse. */
function trickyKeys(base) {
  return [
    `${base}a:b`,
    `${base}a`,
    `${base}:b`,
    `${base}a:`,
    `${base}b`,
    `${base}a::b`,
    `${base}{a}`,
    `${base}{a`,
    `${base}a}`,
    `${base}}{`,
    `${base}{a}:b`,
    `${base}a}:a`, // `{p:<base>a}:a}:a` must not be `{p:<base>a}:a`
    `${base}}:a`,
    `${base}a}:s`,
    `${base}:a`,
    `${base}{`,
    `${base}}`,
    `${base}::1`,
  ]
}

/** inc / incWithQuota of each provider and strategy, with capacity 1 (window 10 s × rate 0.1). */
const INCS = {
  'local.absolute': (key) => rl.local.absolute.inc(key, 0.1),
  'local.suppressed': (key) => rl.local.suppressed.inc(key, 0.1),
  'redis.absolute': (key) => rl.redis.absolute.inc(key, 0.1),
  'redis.suppressed': (key) => rl.redis.suppressed.inc(key, 0.1),
  'hybrid.absolute': (key) => rl.hybrid.absolute.inc(key, 0.1),
  'hybrid.suppressed': (key) => rl.hybrid.suppressed.inc(key, 0.1),
}

describe("keys with ':', '{' and '}'", { skip }, () => {
  for (const [name, inc] of Object.entries(INCS)) {
    test(`${name}: each is valid and has a limit of its own`, async () => {
      const keys = trickyKeys(unique('t'))
      // Capacity 1: the first call of every key is admitted, so no key shares state with another.
      for (const key of keys) assert.deepEqual(await inc(key), ALLOWED, `first call of ${JSON.stringify(key)}`)
      for (const key of keys) {
        const second = await inc(key)
        assert.notDeepEqual(second, ALLOWED, `second call of ${JSON.stringify(key)} must be limited`)
      }
    })
  }

  test('in Redis each key is exactly {<prefix>:<key>}:a / :s, as the Rust crate names it', async () => {
    const base = unique('n')
    const keys = trickyKeys(base)
    for (const key of keys) {
      await rl.redis.absolute.inc(key, 5)
      await rl.redis.suppressed.inc(key, 5)
    }
    const found = await scanAll(client, `{${globEscape(prefix)}:${globEscape(base)}*`)
    const expected = keys.flatMap((key) => [`{${prefix}:${key}}:a`, `{${prefix}:${key}}:s`]).sort()
    assert.deepEqual(found, expected)
    assert.equal(new Set(found).size, keys.length * 2, 'distinct keys, distinct Redis keys')
    // The stored state belongs to the key it is named after.
    for (const key of keys) {
      assert.equal((await rl.redis.absolute.get(key, 5)).remaining, 49, key)
    }
  })

  test('a hybrid limiter and a redis limiter in another instance share the limit of a key with ":"', async () => {
    const key = `${unique('shared')}:10.0.0.1`
    const other = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(10).redisPrefix(prefix).build()
    try {
      // Capacity 3: the redis provider of one instance and the hybrid of another share it.
      assert.deepEqual(await other.redis.absolute.inc(key, 0.3, 2), ALLOWED)
      assert.deepEqual(await rl.hybrid.absolute.inc(key, 0.3), ALLOWED)
      assert.equal((await rl.hybrid.absolute.inc(key, 0.3)).kind, 'rejected')
      assert.equal((await other.redis.absolute.inc(key, 0.3)).kind, 'rejected')
    } finally {
      await other.close()
    }
  })
})

describe('keys with lone surrogates', { skip }, () => {
  const LONE = ['a\uD800', 'a\uDC00']

  const ALL_METHODS = (p) => ({
    'absolute.inc': (key) => p.absolute.inc(key, 0.1),
    'absolute.isAllowed': (key) => p.absolute.isAllowed(key),
    'absolute.incWithQuota': (key) => p.absolute.incWithQuota(key, 0.1),
    'absolute.get': (key) => p.absolute.get(key, 0.1),
    'absolute.refund': (key) => p.absolute.refund(key, 1),
    'absolute.reset': (key) => p.absolute.reset(key),
    'suppressed.inc': (key) => p.suppressed.inc(key, 0.1),
    'suppressed.getSuppressionFactor': (key) => p.suppressed.getSuppressionFactor(key),
    'suppressed.incWithQuota': (key) => p.suppressed.incWithQuota(key, 0.1),
    'suppressed.get': (key) => p.suppressed.get(key, 0.1),
    'suppressed.refund': (key) => p.suppressed.refund(key, 1),
    'suppressed.reset': (key) => p.suppressed.reset(key),
  })

  for (const providerName of ['local', 'redis', 'hybrid']) {
    test(`${providerName}: every method refuses them with a TypeError`, async () => {
      const problems = []
      for (const key of LONE) {
        for (const [method, call] of Object.entries(ALL_METHODS(rl[providerName]))) {
          let error = null
          try {
            const result = call(key)
            if (providerName !== 'local') {
              if (!(result instanceof Promise)) problems.push(`${method}: no Promise`)
              await result
            }
          } catch (caught) {
            error = caught
          }
          if (!(error instanceof TypeError)) {
            problems.push(`${method}(${JSON.stringify(key)}): ${error === null ? 'no error' : `${error.constructor.name} ${error.code}`}`)
          }
        }
      }
      assert.deepEqual(problems, [])
    })

    test(`${providerName}: 'a\\uD800' and 'a\\uDC00' never share a limit with 'a\\uFFFD'`, async () => {
      const base = unique('s')
      const p = rl[providerName]
      // (Which error class is checked above; here only that nothing lands on U+FFFD.)
      const refused = (call) => assert.rejects(async () => call(), /lone UTF-16 surrogate/)
      // Try to record under the lone-surrogate spellings first (each must fail)...
      for (const key of LONE) {
        for (let i = 0; i < 3; i++) {
          await refused(() => p.absolute.inc(base + key, 0.1))
          await refused(() => p.suppressed.inc(base + key, 0.1))
          await refused(() => p.absolute.incWithQuota(base + key, 0.1))
        }
      }
      // ...then U+FFFD still has its whole capacity (1), and only it is counted.
      const replacement = `${base}a\uFFFD`
      assert.deepEqual(await p.absolute.inc(replacement, 0.1), ALLOWED)
      assert.deepEqual(await p.suppressed.inc(replacement, 0.1), ALLOWED)
      assert.equal((await p.absolute.inc(replacement, 0.1)).kind, 'rejected')
      // Refunds and resets under the lone-surrogate spellings do not free U+FFFD's quota.
      for (const key of LONE) {
        await refused(() => p.absolute.refund(base + key, 1))
        await refused(() => p.absolute.reset(base + key))
      }
      assert.equal((await p.absolute.inc(replacement, 0.1)).kind, 'rejected')
      assert.equal((await p.absolute.get(replacement, 0.1)).remaining, 0)
    })
  }

  test('no Redis key was written for a lone-surrogate key', async () => {
    const base = unique('w')
    for (const key of LONE) {
      await assert.rejects(rl.redis.absolute.inc(base + key, 5), typeError)
      await assert.rejects(rl.hybrid.absolute.inc(base + key, 5), typeError)
    }
    assert.deepEqual(await scanAll(client, `{${globEscape(prefix)}:${globEscape(base)}*`), [])
  })
})

describe('req.ip as the key over real HTTP', { skip }, () => {
  let servers = []

  after(async () => {
    for (const server of servers) {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
  })

  function listen(host) {
    const server = http.createServer(async (req, res) => {
      const ip = req.socket.remoteAddress
      try {
        const decision = await rl.redis.absolute.inc(ip, 5)
        res.writeHead(decision.kind === 'allowed' ? 200 : 429, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ ip, kind: decision.kind }))
      } catch (error) {
        res.writeHead(500, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ ip, error: `${error.constructor.name} ${error.code} ${error.message}` }))
      }
    })
    servers.push(server)
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, host, () => resolve(server.address().port))
    })
  }

  function get(host, port) {
    return new Promise((resolve, reject) => {
      const req = http.get({ host, port, path: '/', agent: false }, (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (chunk) => (body += chunk))
        res.on('end', () => resolve({ status: res.statusCode, ...JSON.parse(body) }))
      })
      req.on('error', reject)
    })
  }

  test("IPv4, IPv6 ('::1') and IPv4-mapped ('::ffff:127.0.0.1') clients each get their own limit", async () => {
    // A fresh prefix, so that earlier runs against the same server do not count.
    const ipPrefix = unique('ip')
    const own = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(10).redisPrefix(ipPrefix).build()
    const shared = rl
    rl = own
    try {
      const dualStack = await listen('::') // IPv4 clients appear as ::ffff:127.0.0.1
      const ipv4Only = await listen('127.0.0.1')
      const clients = [
        ['::1', dualStack, '::1'],
        ['127.0.0.1', dualStack, '::ffff:127.0.0.1'],
        ['127.0.0.1', ipv4Only, '127.0.0.1'],
      ]
      // Capacity 10 s × 5/s = 50 per address; 52 requests from each, interleaved.
      const statuses = new Map(clients.map(([, , ip]) => [ip, []]))
      for (let i = 0; i < 52; i++) {
        const responses = await Promise.all(clients.map(([host, port]) => get(host, port)))
        for (const [index, response] of responses.entries()) {
          assert.equal(response.error, undefined, response.error)
          assert.equal(response.ip, clients[index][2], 'the address the server saw')
          statuses.get(response.ip).push(response.status)
        }
      }
      for (const [ip, seen] of statuses) {
        assert.deepEqual(seen, [...Array(50).fill(200), 429, 429], `statuses for ${ip}`)
      }
      // Stored under the addresses themselves.
      for (const [, , ip] of clients) assert.equal((await own.redis.absolute.get(ip, 5)).remaining, 0, ip)
      assert.deepEqual(
        await scanAll(client, `{${ipPrefix}:*`),
        ['{%p:127.0.0.1}:a', '{%p:::1}:a', '{%p:::ffff:127.0.0.1}:a'].map((name) => name.replace('%p', ipPrefix)).sort(),
      )
    } finally {
      rl = shared
      await own.close()
    }
  })
})
