// What the Redis provider leaves in Redis, seen through a raw client: key names, TTLs, expiry,
// one EVALSHA per call, and recovery from a flushed script cache.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { startRedis, redisServerInstalled } from '../scripts/redis-server.mjs'

const ENV_URL = process.env.TRYPEMA_TEST_REDIS_URL
const skip = !ENV_URL && !redisServerInstalled() ? 'no TRYPEMA_TEST_REDIS_URL and redis-server is not installed' : false
const privateSkip = !redisServerInstalled() ? 'redis-server is not installed' : false

const ALLOWED = { kind: 'allowed' }

function unique(label) {
  return `${label}${randomBytes(6).toString('hex')}`
}

function rawClient(redisUrl) {
  return new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: true })
}

/** Every key matching `pattern`, via SCAN (never KEYS on a shared server). */
async function scanAll(client, pattern) {
  const found = []
  let cursor = '0'
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    found.push(...keys)
    cursor = next
  } while (cursor !== '0')
  return found.sort()
}

/** Escapes Redis glob metacharacters (the braces of a hash tag are literal anyway). */
function globEscape(text) {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

/** `cmdstat_<name>` fields from INFO commandstats, as numbers. */
async function commandStats(client) {
  const stats = {}
  for (const line of (await client.info('commandstats')).split('\r\n')) {
    const match = /^cmdstat_([^:]+):(.*)$/.exec(line)
    if (!match) continue
    stats[match[1]] = Object.fromEntries(
      match[2].split(',').map((field) => {
        const [name, value] = field.split('=')
        return [name, Number(value)]
      }),
    )
  }
  return stats
}

describe('redis layout on the shared test server', { skip }, () => {
  let server = null
  let url
  let client

  before(async () => {
    if (ENV_URL) {
      url = ENV_URL
    } else {
      server = await startRedis()
      url = server.url
    }
    client = rawClient(url)
  })

  after(async () => {
    client?.disconnect()
    await server?.stop()
  })

  test('state lives in {prefix:key}:a and {prefix:key}:s, with TTLs bounded by the window, and expires', async () => {
    const prefix = unique('layout')
    const rl = await RateLimiter.builder(url).windowSizeSeconds(1).rateGroupSizeMs(10).redisPrefix(prefix).build()
    try {
      const k1 = unique('user')
      const k2 = unique('other')
      for (let i = 0; i < 3; i++) assert.deepEqual(await rl.redis.absolute.inc(k1, 10), ALLOWED)
      assert.deepEqual(await rl.redis.absolute.isAllowed(k1), ALLOWED)
      for (let i = 0; i < 3; i++) assert.deepEqual(await rl.redis.suppressed.inc(k1, 10), ALLOWED)
      assert.equal(await rl.redis.suppressed.getSuppressionFactor(k1), 0)
      assert.deepEqual(await rl.redis.suppressed.inc(k2, 10, 2), ALLOWED)
      // Reads of unknown keys create nothing.
      assert.deepEqual(await rl.redis.absolute.isAllowed(unique('ghost')), ALLOWED)
      assert.equal(await rl.redis.suppressed.getSuppressionFactor(unique('ghost')), 0)

      const keys = await scanAll(client, `*${globEscape(prefix)}*`)
      assert.deepEqual(keys, [`{${prefix}:${k1}}:a`, `{${prefix}:${k1}}:s`, `{${prefix}:${k2}}:s`].sort())
      for (const key of keys) {
        const pttl = await client.pttl(key)
        assert.ok(pttl > 0 && pttl <= 1001, `PTTL of ${key} is ${pttl}`)
      }
      // Both strategies' keys of an entity carry the same hash tag, so they share a Cluster slot.
      const tags = keys.map((key) => /^\{([^}]*)\}/.exec(key)?.[1])
      assert.deepEqual(tags.sort(), [`${prefix}:${k1}`, `${prefix}:${k1}`, `${prefix}:${k2}`].sort())

      // Idle for the window plus a second: everything under the prefix is gone by itself.
      await sleep(2000)
      assert.deepEqual(await scanAll(client, `*${globEscape(prefix)}*`), [])

      // And the limiter starts afresh.
      assert.deepEqual(await rl.redis.absolute.inc(k1, 10), ALLOWED)
      const pttl = await client.pttl(`{${prefix}:${k1}}:a`)
      assert.ok(pttl > 0 && pttl <= 1001, `PTTL ${pttl}`)
    } finally {
      await rl.close()
    }
  })

  test('a rejected call keeps the TTL bounded (idle state still expires)', async () => {
    const prefix = unique('layoutrej')
    const rl = await RateLimiter.builder(url).windowSizeSeconds(1).rateGroupSizeMs(10).redisPrefix(prefix).build()
    try {
      const key = unique('full')
      assert.deepEqual(await rl.redis.absolute.inc(key, 2, 2), ALLOWED)
      for (let i = 0; i < 20; i++) assert.equal((await rl.redis.absolute.inc(key, 2)).kind, 'rejected')
      const pttl = await client.pttl(`{${prefix}:${key}}:a`)
      assert.ok(pttl > 0 && pttl <= 1001, `PTTL ${pttl}`)
      // A count larger than the whole capacity on a new key records (and creates) nothing.
      const huge = unique('huge')
      assert.equal((await rl.redis.absolute.inc(huge, 2, 3)).kind, 'rejected')
      assert.equal(await client.exists(`{${prefix}:${huge}}:a`), 0)
    } finally {
      await rl.close()
    }
  })
})

describe('redis round trips on a private server', { skip: privateSkip }, () => {
  let server
  let client
  let rl

  before(async () => {
    // Private, so that no other test's commands show up in the stats.
    server = await startRedis()
    client = rawClient(server.url)
    rl = await RateLimiter.builder(server.url).windowSizeSeconds(1).rateGroupSizeMs(10).build()
  })

  after(async () => {
    await rl?.close()
    client?.disconnect()
    await server?.stop()
  })

  test('each call is exactly one EVALSHA, and no key other than the entities’ is written', async () => {
    // Load both scripts first, so that no NOSCRIPT round trip is counted below.
    await rl.redis.absolute.inc(unique('warm'), 5)
    await rl.redis.suppressed.inc(unique('warm'), 5)
    await client.flushall()
    await client.config('RESETSTAT')

    const keys = Array.from({ length: 5 }, () => unique('rt'))
    let calls = 0
    // Sequential calls...
    for (const key of keys) {
      await rl.redis.absolute.inc(key, 3)
      await rl.redis.absolute.isAllowed(key)
      await rl.redis.suppressed.inc(key, 3)
      await rl.redis.suppressed.getSuppressionFactor(key)
      calls += 4
    }
    // ...and a concurrent batch, including rejected and suppressed outcomes.
    const batch = []
    for (let i = 0; i < 40; i++) {
      const key = keys[i % keys.length]
      batch.push(rl.redis.absolute.inc(key, 3), rl.redis.suppressed.inc(key, 3))
    }
    const decisions = await Promise.all(batch)
    calls += batch.length
    assert.ok(decisions.some((d) => d.kind === 'rejected'))
    assert.ok(decisions.some((d) => d.kind === 'suppressed'))

    const stats = await commandStats(client)
    assert.equal(stats.evalsha?.calls, calls, JSON.stringify(stats))
    assert.equal(stats.evalsha.failed_calls, 0)
    assert.equal(stats.eval, undefined, 'no EVAL')
    assert.equal(stats['script|load'], undefined, 'no SCRIPT LOAD')
    // Every other command ran inside the scripts or came from this test's own client.
    const outside = Object.keys(stats).filter(
      (name) => !['evalsha', 'config|resetstat', 'info', 'time', 'get', 'set', 'setrange', 'del', 'rpush', 'lpop', 'lindex', 'pexpire'].includes(name),
    )
    assert.deepEqual(outside, [])
    // Only the entities' own keys exist: a header per strategy and key, plus that entity's
    // bucket list where it has more than two buckets; nothing global.
    const existing = await scanAll(client, '*')
    const headers = keys.flatMap((key) => [`{trypema:${key}}:a`, `{trypema:${key}}:s`]).sort()
    assert.deepEqual(existing.filter((name) => !name.endsWith(':b')), headers)
    for (const name of existing.filter((name) => name.endsWith(':b'))) {
      assert.ok(headers.includes(name.slice(0, -2)), `${name} belongs to an entity header`)
    }
  })

  test('after SCRIPT FLUSH, calls still succeed with the right decisions', async () => {
    const key = unique('flush')
    const other = unique('flush')
    assert.deepEqual(await rl.redis.absolute.inc(key, 3), ALLOWED)
    assert.deepEqual(await rl.redis.suppressed.inc(key, 3), ALLOWED)

    await client.script('FLUSH')
    // A single call after the flush.
    assert.deepEqual(await rl.redis.absolute.inc(key, 3), ALLOWED)
    assert.deepEqual(await rl.redis.suppressed.inc(key, 3), ALLOWED)

    await client.script('FLUSH')
    // A concurrent batch after the flush: every call must reload and succeed; state is intact.
    const results = await Promise.all([
      rl.redis.absolute.inc(key, 3),
      rl.redis.absolute.inc(key, 3),
      rl.redis.absolute.isAllowed(key),
      rl.redis.suppressed.getSuppressionFactor(key),
      rl.redis.absolute.inc(other, 3),
    ])
    // Reloading may reorder the calls of one batch, so only the totals are fixed: the key had
    // 2 of 3, so exactly one of the two incs is admitted.
    assert.deepEqual([results[0].kind, results[1].kind].sort(), ['allowed', 'rejected'])
    assert.ok(['allowed', 'rejected'].includes(results[2].kind))
    assert.equal(results[3], 0)
    assert.deepEqual(results[4], ALLOWED)
    assert.equal((await rl.redis.absolute.isAllowed(key)).kind, 'rejected')
    assert.equal((await rl.redis.absolute.inc(key, 3)).kind, 'rejected')

    const stats = await commandStats(client)
    assert.ok(stats['script|load']?.calls >= 2, JSON.stringify(stats['script|load']))
  })
})
