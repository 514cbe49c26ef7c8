// What the Redis-backed providers leave in Redis, seen through a raw client: exactly one string
// key per entity and strategy (`{<prefix>:<key>}:a` / `:s`, no `:b` lists, nothing global), TTLs,
// expiry, one EVALSHA per call, EVAL for that call only after SCRIPT FLUSH, and rebuilding state
// that was damaged or has the wrong type.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { startRedis } from '../scripts/redis-server.mjs'
import { ALLOWED, globEscape, privateRedis, scanAll, sharedRedis, unique, waitFor } from './support.mjs'

function rawClient(redisUrl) {
  return new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: true })
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

/** Commands the scripts run (each script calls TIME itself) and the client's own DEL (reset). */
const SCRIPT_COMMANDS = ['time', 'getrange', 'setrange', 'set', 'pexpire', 'del']

describe('redis layout on the shared test server', { skip: sharedRedis.skip }, () => {
  let client

  before(async () => {
    sharedRedis.check()
    client = rawClient(sharedRedis.url)
  })

  after(async () => {
    client?.disconnect()
  })

  test('state lives in one string key per entity: {prefix:key}:a and {prefix:key}:s, with bounded TTLs, and expires', async () => {
    const prefix = unique('layout')
    const rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(1).rateGroupSizeMs(10).redisPrefix(prefix).build()
    try {
      const k1 = unique('user')
      const k2 = unique('other')
      const k3 = unique('hybrid')
      // Several buckets (more than two, which used to need a list key).
      for (let i = 0; i < 6; i++) {
        assert.deepEqual(await rl.redis.absolute.inc(k1, 10), ALLOWED)
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
      assert.deepEqual(await rl.redis.absolute.isAllowed(k1), ALLOWED)
      for (let i = 0; i < 3; i++) assert.deepEqual(await rl.redis.suppressed.inc(k1, 10), ALLOWED)
      assert.equal(await rl.redis.suppressed.getSuppressionFactor(k1), 0)
      assert.deepEqual(await rl.redis.suppressed.inc(k2, 10, 2), ALLOWED)
      assert.equal((await rl.redis.absolute.incWithQuota(k2, 10)).remaining, 9)
      // The hybrid provider writes to the same keys.
      assert.deepEqual(await rl.hybrid.absolute.inc(k3, 10), ALLOWED)
      assert.deepEqual(await rl.hybrid.suppressed.inc(k3, 10), ALLOWED)
      // Reads of unknown keys create nothing.
      assert.deepEqual(await rl.redis.absolute.isAllowed(unique('ghost')), ALLOWED)
      assert.equal(await rl.redis.suppressed.getSuppressionFactor(unique('ghost')), 0)
      assert.equal((await rl.redis.absolute.get(unique('ghost'), 10)).remaining, 10)
      assert.equal(await rl.redis.absolute.refund(unique('ghost'), 3), 0)
      // Pending hybrid counts reach Redis on close().
      await rl.close()

      const keys = await scanAll(client, `*${globEscape(prefix)}*`)
      const expected = [
        `{${prefix}:${k1}}:a`,
        `{${prefix}:${k1}}:s`,
        `{${prefix}:${k2}}:a`,
        `{${prefix}:${k2}}:s`,
        `{${prefix}:${k3}}:a`,
        `{${prefix}:${k3}}:s`,
      ].sort()
      assert.deepEqual(keys, expected, 'exactly one key per entity and strategy, nothing else')
      for (const key of keys) {
        assert.equal(await client.type(key), 'string', key)
        const pttl = await client.pttl(key)
        // The hybrid's lease bucket starts up to a lease period (here 50 ms) in the future.
        assert.ok(pttl > 0 && pttl <= 1001 + 50, `PTTL of ${key} is ${pttl}`)
      }
      // Both strategies' keys of an entity carry the same hash tag, so they share a Cluster slot.
      const tags = keys.map((key) => /^\{([^}]*)\}/.exec(key)?.[1])
      assert.deepEqual(tags.sort(), expected.map((key) => /^\{([^}]*)\}/.exec(key)[1]).sort())

      // Idle for the window: everything under the prefix expires by itself.
      await waitFor(
        () => scanAll(client, `*${globEscape(prefix)}*`),
        (left) => left.length === 0,
        { timeoutMs: 3000, intervalMs: 100, what: 'keys expiring after the window' },
      )
    } finally {
      await rl.close()
    }
    // And a new limiter starts afresh.
    const again = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(1).redisPrefix(prefix).build()
    try {
      const key = unique('again')
      assert.deepEqual(await again.redis.absolute.inc(key, 10), ALLOWED)
      const pttl = await client.pttl(`{${prefix}:${key}}:a`)
      assert.ok(pttl > 0 && pttl <= 1001, `PTTL ${pttl}`)
    } finally {
      await again.close()
    }
  })

  test('a rejected call keeps the TTL bounded (idle state still expires)', async () => {
    const prefix = unique('layoutrej')
    const rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(1).rateGroupSizeMs(10).redisPrefix(prefix).build()
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

  test('reset deletes the key; refunding everything deletes it too', async () => {
    const prefix = unique('layoutreset')
    const rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(10).redisPrefix(prefix).build()
    try {
      const key = unique('r')
      await rl.redis.absolute.inc(key, 5, 3)
      await rl.redis.suppressed.inc(key, 5, 3)
      assert.equal(await client.exists(`{${prefix}:${key}}:a`, `{${prefix}:${key}}:s`), 2)
      await rl.redis.absolute.reset(key)
      assert.equal(await client.exists(`{${prefix}:${key}}:a`), 0)
      assert.equal(await client.exists(`{${prefix}:${key}}:s`), 1, 'the other strategy is untouched')
      await rl.redis.absolute.inc(key, 5, 2)
      assert.equal(await rl.redis.absolute.refund(key, 10), 2)
      assert.equal(await client.exists(`{${prefix}:${key}}:a`), 0, 'no state left after refunding everything')
    } finally {
      await rl.close()
    }
  })

  test('a key holding garbage, another type or a truncated value is rebuilt, never an error loop or an over-admission', async () => {
    const prefix = unique('layoutbad')
    const rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(10).redisPrefix(prefix).build()
    try {
      const damage = {
        'a short string': (key) => client.set(key, 'garbage'),
        'a list': (key) => client.rpush(key, 'a', 'b'),
        'a hash': (key) => client.hset(key, 'f', 'v'),
        'a set': (key) => client.sadd(key, 'm'),
        'a zset': (key) => client.zadd(key, 1, 'm'),
        'a long string of zeros': (key) => client.set(key, Buffer.alloc(4096)),
      }
      for (const [what, write] of Object.entries(damage)) {
        for (const [strategy, tag] of [['absolute', 'a'], ['suppressed', 's']]) {
          const key = unique('bad')
          await write(`{${prefix}:${key}}:${tag}`)
          const first = await rl.redis[strategy].inc(key, 1, 3)
          assert.deepEqual(first, ALLOWED, `${strategy} over ${what}`)
          assert.notDeepEqual(await rl.redis[strategy].inc(key, 1, 10), ALLOWED, `${strategy} over ${what}: capacity 10, 3 used`)
          assert.equal((await rl.redis[strategy].get(key, 1)).remaining, 7, `${strategy} over ${what}`)
          assert.equal(await client.type(`{${prefix}:${key}}:${tag}`), 'string')
        }
      }
      // A valid header whose bucket array was cut off: the counts are kept (folded), never lost.
      const key = unique('cut')
      const name = `{${prefix}:${key}}:a`
      for (let i = 0; i < 5; i++) {
        assert.deepEqual(await rl.redis.absolute.inc(key, 1, 1), ALLOWED)
        await new Promise((resolve) => setTimeout(resolve, 120)) // a new 100 ms bucket each time
      }
      const before = await client.getBuffer(name)
      const header = 8 * (6 + 1 + 2 * 2) // magic, clock, epoch, param, n, head, sum, oldest, newest
      assert.ok(before.length > header, `the value has a bucket array (${before.length} bytes)`)
      await client.set(name, before.subarray(0, header), 'KEEPTTL')
      const quota = await rl.redis.absolute.incWithQuota(key, 1, 1)
      assert.deepEqual(quota.decision, ALLOWED)
      assert.equal(quota.remaining, 4, 'the 5 units recorded before the damage are still counted')
      assert.notDeepEqual(await rl.redis.absolute.inc(key, 1, 5), ALLOWED)
    } finally {
      await rl.close()
    }
  })
})

describe('redis round trips on a private server', { skip: privateRedis.skip }, () => {
  let server
  let client
  let rl

  before(async () => {
    privateRedis.check()
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
    // Load both scripts first (build() did), so that no NOSCRIPT round trip is counted below.
    await rl.redis.absolute.inc(unique('warm'), 5)
    await rl.redis.suppressed.inc(unique('warm'), 5)
    await client.flushall()
    await client.config('RESETSTAT')

    const keys = Array.from({ length: 5 }, () => unique('rt'))
    let calls = 0
    // Sequential calls of every method...
    for (const key of keys) {
      await rl.redis.absolute.inc(key, 3)
      await rl.redis.absolute.isAllowed(key)
      await rl.redis.absolute.incWithQuota(key, 3)
      await rl.redis.absolute.get(key, 3)
      await rl.redis.absolute.refund(key, 1)
      await rl.redis.suppressed.inc(key, 3)
      await rl.redis.suppressed.getSuppressionFactor(key)
      await rl.redis.suppressed.incWithQuota(key, 3)
      await rl.redis.suppressed.get(key, 3)
      await rl.redis.suppressed.refund(key, 1)
      calls += 10
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
    assert.equal(stats.evalsha.failed_calls ?? 0, 0)
    assert.equal(stats.eval, undefined, 'no EVAL')
    assert.equal(stats['script|load'], undefined, 'no SCRIPT LOAD')
    // Every other command ran inside the scripts or came from this test's own client.
    const outside = Object.keys(stats).filter((name) => !['evalsha', 'config|resetstat', 'info', ...SCRIPT_COMMANDS].includes(name))
    assert.deepEqual(outside, [])
    // The scripts read the server's clock themselves: one TIME per script call.
    assert.equal(stats.time?.calls, calls)
    // Only the entities' own keys exist, one string per strategy; nothing global, no lists.
    const existing = await scanAll(client, '*')
    const entityKeys = keys.flatMap((key) => [`{trypema:${key}}:a`, `{trypema:${key}}:s`]).sort()
    assert.deepEqual(existing, entityKeys)
    for (const name of existing) assert.equal(await client.type(name), 'string')
  })

  test('build() verifies Redis by running both scripts (probe mode) and leaves no key behind', async () => {
    await client.flushall()
    await client.script('FLUSH')
    await client.config('RESETSTAT')
    const fresh = await RateLimiter.builder(server.url).build()
    const stats = await commandStats(client)
    await fresh.close()
    // Each script once: EVALSHA answered NOSCRIPT, then EVAL (or EVALSHA alone, if cached).
    const scriptRuns = (stats.eval?.calls ?? 0) + (stats.evalsha?.calls ?? 0) - (stats.evalsha?.failed_calls ?? 0) - (stats.evalsha?.rejected_calls ?? 0)
    assert.equal(scriptRuns, 2, JSON.stringify(stats))
    for (const name of SCRIPT_COMMANDS) assert.ok(stats[name]?.calls >= 1, `the probe ran ${name}: ${JSON.stringify(stats)}`)
    assert.deepEqual(await scanAll(client, '*'), [], 'the probe keys are deleted')
  })

  test('reset is one DEL from the client; no script call', async () => {
    const key = unique('reset')
    await rl.redis.absolute.inc(key, 3)
    await client.config('RESETSTAT')
    await rl.redis.absolute.reset(key)
    await rl.redis.suppressed.reset(key)
    const stats = await commandStats(client)
    assert.equal(stats.del?.calls, 2, JSON.stringify(stats))
    assert.equal(stats.evalsha, undefined)
    assert.equal(await client.exists(`{trypema:${key}}:a`), 0)
  })

  test('after SCRIPT FLUSH, the next call of each script is sent once more with EVAL, and no call runs twice', async () => {
    const key = unique('flush')
    const other = unique('flush')
    assert.deepEqual(await rl.redis.absolute.inc(key, 10), ALLOWED)
    assert.deepEqual(await rl.redis.suppressed.inc(key, 10), ALLOWED)

    await client.script('FLUSH')
    await client.config('RESETSTAT')
    // A single call after the flush: EVALSHA (NOSCRIPT), then EVAL of that call; no SCRIPT LOAD.
    assert.deepEqual(await rl.redis.absolute.inc(key, 10), ALLOWED)
    let stats = await commandStats(client)
    assert.equal(stats.evalsha?.calls, 1, JSON.stringify(stats))
    assert.equal(stats.eval?.calls, 1, JSON.stringify(stats))
    assert.equal(stats['script|load'], undefined, 'no SCRIPT LOAD')
    // EVAL cached the script: the next call is a plain EVALSHA again.
    assert.deepEqual(await rl.redis.absolute.inc(key, 10), ALLOWED)
    stats = await commandStats(client)
    assert.equal(stats.evalsha.calls, 2)
    assert.equal(stats.eval.calls, 1)
    assert.equal((await rl.redis.absolute.get(key, 10)).remaining, 7, 'each call counted once')

    await client.script('FLUSH')
    await client.config('RESETSTAT')
    // A concurrent batch after the flush: every call succeeds, and each is counted exactly once.
    const batch = [
      ...Array.from({ length: 6 }, () => rl.redis.absolute.inc(key, 10)),
      rl.redis.absolute.isAllowed(key),
      rl.redis.suppressed.getSuppressionFactor(key),
      rl.redis.suppressed.inc(key, 10),
      rl.redis.absolute.inc(other, 10),
    ]
    const results = await Promise.all(batch)
    assert.deepEqual(results.slice(0, 6), Array(6).fill(ALLOWED))
    assert.equal(results[7], 0)
    assert.deepEqual(results[8], ALLOWED)
    assert.deepEqual(results[9], ALLOWED)
    assert.equal((await rl.redis.absolute.get(key, 10)).remaining, 1, 'no call of the batch ran twice')
    assert.equal((await rl.redis.suppressed.get(key, 10)).remaining, 8)
    stats = await commandStats(client)
    assert.equal(stats['script|load'], undefined, 'no SCRIPT LOAD')
    assert.ok(stats.eval?.calls >= 1 && stats.eval.calls <= batch.length, JSON.stringify(stats.eval))
    // Every call that met NOSCRIPT was sent again as EVAL, exactly once.
    assert.equal(stats.evalsha.calls - (stats.evalsha.failed_calls ?? 0) - (stats.evalsha.rejected_calls ?? 0) + stats.eval.calls, batch.length + 2)
  })
})
