// The Redis provider through the public API: decisions, validation, connection failures,
// close(), large batches of concurrent calls, and surviving a Redis restart.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'

import { RateLimiter } from '../index.mjs'
import { startRedis, freePort } from '../scripts/redis-server.mjs'
import { ALLOWED, codeError, privateRedis, sharedRedis, typeError, within } from './support.mjs'

const skip = sharedRedis.skip

const RUN = randomBytes(4).toString('hex')
let serial = 0
/** A key no other test (or earlier run against the same server) has used. */
function freshKey(label = 'k') {
  serial += 1
  return `${label}-${RUN}-${serial}-${randomBytes(3).toString('hex')}`
}

let url
let rl

function oneSecond(redisUrl = url) {
  return RateLimiter.builder(redisUrl).windowSizeSeconds(1).rateGroupSizeMs(10)
}

before(async () => {
  sharedRedis.check()
  if (skip) return
  url = sharedRedis.url
  rl = await oneSecond().build()
})

after(async () => {
  await rl?.close()
})

describe('redis provider: decisions', { skip }, () => {
  test('absolute.inc admits floor(window × rate), then rejects with back-off hints', async () => {
    const key = freshKey('abs')
    // floor(1 × 5.7) = 5
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await rl.redis.absolute.inc(key, 5.7), ALLOWED, `call ${i + 1}`)
    }
    for (let i = 0; i < 3; i++) {
      const d = await rl.redis.absolute.inc(key, 5.7)
      assert.equal(d.kind, 'rejected')
      assert.deepEqual(Object.keys(d).sort(), ['kind', 'remainingAfterWaiting', 'retryAfterMs', 'windowSizeSeconds'])
      assert.equal(d.windowSizeSeconds, 1)
      assert.ok(Number.isInteger(d.retryAfterMs), `retryAfterMs ${d.retryAfterMs}`)
      assert.ok(d.retryAfterMs > 0 && d.retryAfterMs <= 1001, `retryAfterMs ${d.retryAfterMs}`)
      assert.ok(Number.isInteger(d.remainingAfterWaiting))
      assert.ok(d.remainingAfterWaiting >= 0 && d.remainingAfterWaiting < 5, `remaining ${d.remainingAfterWaiting}`)
    }
  })

  test('count defaults to 1 and larger counts use up capacity accordingly', async () => {
    const key = freshKey('count')
    // capacity floor(1 × 10) = 10
    assert.deepEqual(await rl.redis.absolute.inc(key, 10, 4), ALLOWED) // 4
    assert.deepEqual(await rl.redis.absolute.inc(key, 10, 4), ALLOWED) // 8
    const over = await rl.redis.absolute.inc(key, 10, 3) // 11 > 10: rejected, nothing recorded
    assert.equal(over.kind, 'rejected')
    assert.equal(over.remainingAfterWaiting >= 0 && over.remainingAfterWaiting <= 4, true)
    assert.deepEqual(await rl.redis.absolute.inc(key, 10), ALLOWED) // 9
    assert.deepEqual(await rl.redis.absolute.inc(key, 10, 1), ALLOWED) // 10
    assert.equal((await rl.redis.absolute.inc(key, 10)).kind, 'rejected')

    // A count larger than the whole capacity is rejected, records nothing, and is told to wait
    // exactly one window (it can never fit sooner), with or without state.
    const big = freshKey('count-big')
    assert.deepEqual(await rl.redis.absolute.inc(big, 10, 11), {
      kind: 'rejected',
      windowSizeSeconds: 1,
      retryAfterMs: 1000,
      remainingAfterWaiting: 0,
    })
    assert.deepEqual(await rl.redis.absolute.inc(big, 10, 10), ALLOWED)
    const again = await rl.redis.absolute.inc(big, 10, 2 ** 53 - 1)
    assert.equal(again.kind, 'rejected')
    assert.equal(again.retryAfterMs, 1000)
    // A count that fits the capacity but not what is left waits for the oldest bucket instead.
    const fits = await rl.redis.absolute.inc(big, 10, 10)
    assert.equal(fits.kind, 'rejected')
    assert.ok(fits.retryAfterMs > 0 && fits.retryAfterMs <= 1001, `retryAfterMs ${fits.retryAfterMs}`)
  })

  test('isAllowed reports without recording', async () => {
    const key = freshKey('check')
    assert.deepEqual(await rl.redis.absolute.isAllowed(key), ALLOWED) // unknown key
    for (let i = 0; i < 10; i++) assert.deepEqual(await rl.redis.absolute.isAllowed(key), ALLOWED)
    // Ten checks recorded nothing: the whole capacity (3) is still available.
    for (let i = 0; i < 3; i++) assert.deepEqual(await rl.redis.absolute.inc(key, 3), ALLOWED)
    const d = await rl.redis.absolute.isAllowed(key)
    assert.equal(d.kind, 'rejected')
    assert.equal(d.windowSizeSeconds, 1)
    assert.ok(d.retryAfterMs > 0 && d.retryAfterMs <= 1001, `retryAfterMs ${d.retryAfterMs}`)
    assert.ok(d.remainingAfterWaiting >= 0 && d.remainingAfterWaiting < 3)
    assert.equal((await rl.redis.absolute.inc(key, 3)).kind, 'rejected')
  })

  test('the first rate fixes the key’s capacity (sticky limit)', async () => {
    const key = freshKey('sticky')
    assert.deepEqual(await rl.redis.absolute.inc(key, 2), ALLOWED)
    assert.deepEqual(await rl.redis.absolute.inc(key, 100), ALLOWED)
    assert.equal((await rl.redis.absolute.inc(key, 100)).kind, 'rejected')
  })

  test('calls are admitted again once the window has passed', async () => {
    const key = freshKey('window')
    for (let i = 0; i < 2; i++) assert.deepEqual(await rl.redis.absolute.inc(key, 2), ALLOWED)
    const d = await rl.redis.absolute.inc(key, 2)
    assert.equal(d.kind, 'rejected')
    await sleep(d.retryAfterMs + 50)
    assert.deepEqual(await rl.redis.absolute.isAllowed(key), ALLOWED)
    assert.deepEqual(await rl.redis.absolute.inc(key, 2), ALLOWED)
    assert.deepEqual(await rl.redis.absolute.inc(key, 2), ALLOWED)
    assert.equal((await rl.redis.absolute.inc(key, 2)).kind, 'rejected')
  })

  test('suppressed.inc admits up to the soft capacity, then sheds; getSuppressionFactor is in [0, 1]', async () => {
    assert.equal(await rl.redis.suppressed.getSuppressionFactor(freshKey('unknown')), 0)

    const key = freshKey('supp')
    // hard_limit_factor 1: soft = hard = 5 per second.
    for (let i = 0; i < 5; i++) assert.deepEqual(await rl.redis.suppressed.inc(key, 5), ALLOWED)
    for (let i = 0; i < 5; i++) {
      const d = await rl.redis.suppressed.inc(key, 5)
      assert.equal(d.kind, 'suppressed')
      assert.deepEqual(Object.keys(d).sort(), ['isAllowed', 'kind', 'suppressionFactor'])
      assert.equal(d.suppressionFactor, 1) // at the hard ceiling
      assert.equal(d.isAllowed, false)
    }
    assert.equal(await rl.redis.suppressed.getSuppressionFactor(key), 1)

    // With a hard ceiling above the soft one, calls between them are shed with 0 < f < 1.
    const soft = await oneSecond().hardLimitFactor(2).build()
    try {
      const key2 = freshKey('supp-soft')
      for (let i = 0; i < 5; i++) assert.deepEqual(await soft.redis.suppressed.inc(key2, 5), ALLOWED)
      let admitted = 5
      for (let i = 0; i < 30; i++) {
        const d = await soft.redis.suppressed.inc(key2, 5)
        assert.equal(d.kind, 'suppressed')
        assert.equal(typeof d.isAllowed, 'boolean')
        assert.ok(d.suppressionFactor >= 0 && d.suppressionFactor <= 1, `factor ${d.suppressionFactor}`)
        if (d.isAllowed) admitted += 1
        const f = await soft.redis.suppressed.getSuppressionFactor(key2)
        assert.ok(f >= 0 && f <= 1, `factor ${f}`)
      }
      // Never more than the hard ceiling (10) admitted in the window.
      assert.ok(admitted <= 10, `admitted ${admitted}`)
      assert.ok(admitted > 5, `admitted ${admitted}`)
    } finally {
      await soft.close()
    }
  })

  test('every redis method returns a Promise', async () => {
    const key = freshKey('promise')
    const other = freshKey('promise')
    const calls = [
      rl.redis.absolute.inc(key, 5),
      rl.redis.absolute.isAllowed(key),
      rl.redis.suppressed.inc(key, 5),
      rl.redis.suppressed.getSuppressionFactor(key),
      rl.redis.absolute.incWithQuota(other, 5),
      rl.redis.absolute.get(other, 5),
      rl.redis.absolute.refund(freshKey('promise'), 1),
      rl.redis.absolute.reset(freshKey('promise')),
      rl.redis.suppressed.incWithQuota(other, 5),
      rl.redis.suppressed.get(freshKey('promise'), 5),
      rl.redis.suppressed.refund(freshKey('promise'), 1),
      rl.redis.suppressed.reset(freshKey('promise')),
    ]
    for (const call of calls) assert.ok(call instanceof Promise)
    const [inc, check, sInc, factor, quota, get, refunded, reset, sQuota, sGet, sRefunded, sReset] = await Promise.all(calls)
    assert.deepEqual(inc, ALLOWED)
    assert.deepEqual(check, ALLOWED)
    assert.deepEqual(sInc, ALLOWED)
    assert.equal(factor, 0)
    assert.deepEqual(Object.keys(quota).sort(), ['decision', 'degraded', 'limit', 'remaining', 'resetMs'])
    assert.deepEqual(quota.decision, ALLOWED)
    assert.equal(quota.limit, 5)
    assert.equal(quota.remaining, 4)
    assert.equal(quota.degraded, false)
    assert.deepEqual(Object.keys(get).sort(), ['limit', 'remaining', 'resetMs'])
    assert.equal(refunded, 0)
    assert.equal(reset, undefined)
    assert.equal(sQuota.limit, 5)
    assert.deepEqual(sGet, { limit: 5, remaining: 5, resetMs: 0 })
    assert.equal(sRefunded, 0)
    assert.equal(sReset, undefined)
    // Even invalid arguments give a (rejected) Promise rather than a synchronous throw.
    const bad = rl.redis.absolute.inc('', 5)
    assert.ok(bad instanceof Promise)
    await assert.rejects(bad, codeError('TRYPEMA_INVALID_REDIS_KEY'))
  })
})

describe('redis provider: invalid arguments', { skip }, () => {
  const methods = {
    'absolute.inc': (key) => rl.redis.absolute.inc(key, 5, 1),
    'absolute.isAllowed': (key) => rl.redis.absolute.isAllowed(key),
    'suppressed.inc': (key) => rl.redis.suppressed.inc(key, 5, 1),
    'suppressed.getSuppressionFactor': (key) => rl.redis.suppressed.getSuppressionFactor(key),
  }

  async function assertStillWorks() {
    assert.deepEqual(await rl.redis.absolute.inc(freshKey('ok'), 5), ALLOWED)
    assert.deepEqual(await rl.redis.suppressed.inc(freshKey('ok'), 5), ALLOWED)
  }

  test('invalid keys reject with TRYPEMA_INVALID_REDIS_KEY and the limiter keeps working', async () => {
    const badKeys = {
      empty: '',
      '256 bytes': 'k'.repeat(256),
      '256 bytes of 2-byte characters': 'é'.repeat(128),
    }
    for (const [method, call] of Object.entries(methods)) {
      for (const [what, key] of Object.entries(badKeys)) {
        await assert.rejects(() => call(key), codeError('TRYPEMA_INVALID_REDIS_KEY'), `${method}: ${what}`)
      }
    }
    await assertStillWorks()
    // Keys with ':' (e.g. an IPv6 address), '{' and '}' are valid (see keys.test.mjs).
    assert.deepEqual(await rl.redis.absolute.inc(`a:b:${freshKey()}`, 5), ALLOWED)
    assert.deepEqual(await rl.redis.suppressed.inc(`{${freshKey()}}`, 5), ALLOWED)
    // The longest valid keys, counted in bytes.
    assert.deepEqual(await rl.redis.absolute.inc('k'.repeat(255 - RUN.length) + RUN, 5), ALLOWED)
    assert.deepEqual(await rl.redis.absolute.inc('é'.repeat(123) + RUN + 'x', 5), ALLOWED)
  })

  test('keys far over the limit (600 bytes) are also TRYPEMA_INVALID_REDIS_KEY', async () => {
    await assert.rejects(() => rl.redis.absolute.inc('k'.repeat(600), 5), codeError('TRYPEMA_INVALID_REDIS_KEY'))
  })

  test('invalid rates reject with TRYPEMA_INVALID_RATE_LIMIT', async () => {
    for (const rate of [NaN, 0, -1, Infinity, -Infinity]) {
      await assert.rejects(() => rl.redis.absolute.inc(freshKey(), rate), codeError('TRYPEMA_INVALID_RATE_LIMIT'), `absolute ${rate}`)
      await assert.rejects(() => rl.redis.suppressed.inc(freshKey(), rate), codeError('TRYPEMA_INVALID_RATE_LIMIT'), `suppressed ${rate}`)
    }
    await assertStillWorks()
  })

  test('invalid counts reject with TRYPEMA_INVALID_COUNT', async () => {
    for (const count of [1.5, -1, NaN, Infinity, 2 ** 53]) {
      await assert.rejects(() => rl.redis.absolute.inc(freshKey(), 5, count), codeError('TRYPEMA_INVALID_COUNT'), `absolute ${count}`)
      await assert.rejects(() => rl.redis.suppressed.inc(freshKey(), 5, count), codeError('TRYPEMA_INVALID_COUNT'), `suppressed ${count}`)
    }
    await assertStillWorks()
  })

  test('wrong argument types reject with TypeError', async () => {
    const key = freshKey()
    const cases = [
      () => rl.redis.absolute.inc(5, 5),
      () => rl.redis.absolute.inc(null, 5),
      () => rl.redis.absolute.inc(undefined, 5),
      () => rl.redis.absolute.inc(key, '5'),
      () => rl.redis.absolute.inc(key),
      () => rl.redis.absolute.inc(key, 5, '1'),
      () => rl.redis.absolute.inc(key, 5, null),
      () => rl.redis.absolute.isAllowed({}),
      () => rl.redis.suppressed.inc(Symbol('k'), 5),
      () => rl.redis.suppressed.inc(key, 5n),
      () => rl.redis.suppressed.inc(key, 5, 1n),
      () => rl.redis.suppressed.getSuppressionFactor(['k']),
    ]
    for (const [i, call] of cases.entries()) {
      await assert.rejects(call, typeError, `case ${i}`)
    }
    // Nothing was recorded for the valid key used with bad rates or counts.
    assert.deepEqual(await rl.redis.absolute.isAllowed(key), ALLOWED)
    await assertStillWorks()
  })

  test('an invalid call does not disturb valid calls sent in the same batch', async () => {
    const a = freshKey('batch')
    const b = freshKey('batch')
    const results = await Promise.allSettled([
      rl.redis.absolute.inc(a, 2),
      rl.redis.absolute.inc('', 2),
      rl.redis.absolute.inc(b, NaN),
      rl.redis.suppressed.inc(b, 2),
      rl.redis.absolute.inc(a, 2, -3),
      rl.redis.absolute.inc(a, 2),
      rl.redis.absolute.inc(a, 2),
    ])
    assert.deepEqual(
      results.map((r) => (r.status === 'fulfilled' ? r.value.kind : r.reason.code)),
      ['allowed', 'TRYPEMA_INVALID_REDIS_KEY', 'TRYPEMA_INVALID_RATE_LIMIT', 'allowed', 'TRYPEMA_INVALID_COUNT', 'allowed', 'rejected'],
    )
  })
})

describe('redis provider: configuration and connecting', { skip }, () => {
  test('an invalid redisPrefix rejects build() with TRYPEMA_INVALID_REDIS_PREFIX', async () => {
    await assert.rejects(oneSecond().redisPrefix('a:b').build(), codeError('TRYPEMA_INVALID_REDIS_PREFIX'))
    await assert.rejects(oneSecond().redisPrefix('').build(), codeError('TRYPEMA_INVALID_REDIS_PREFIX'))
    // Settings are checked before connecting, so the setting is blamed even if Redis is unreachable.
    const closed = `redis://127.0.0.1:${await freePort()}/`
    await assert.rejects(oneSecond(closed).redisPrefix('a:b').build(), codeError('TRYPEMA_INVALID_REDIS_PREFIX'))
  })

  test('limiters share limits exactly when they share a prefix', async () => {
    const p1 = `p1${RUN}${randomBytes(3).toString('hex')}`
    const p2 = `p2${RUN}${randomBytes(3).toString('hex')}`
    const a = await oneSecond().redisPrefix(p1).build()
    const b = await oneSecond().redisPrefix(p2).build()
    const c = await oneSecond().redisPrefix(p1).build()
    try {
      const key = freshKey('shared')
      for (let i = 0; i < 3; i++) assert.deepEqual(await a.redis.absolute.inc(key, 3), ALLOWED)
      assert.equal((await a.redis.absolute.inc(key, 3)).kind, 'rejected')
      // Another prefix: independent state.
      for (let i = 0; i < 3; i++) assert.deepEqual(await b.redis.absolute.inc(key, 3), ALLOWED)
      assert.equal((await b.redis.absolute.inc(key, 3)).kind, 'rejected')
      // The same prefix: the same state, already full.
      assert.equal((await c.redis.absolute.isAllowed(key)).kind, 'rejected')
      assert.equal((await c.redis.absolute.inc(key, 3)).kind, 'rejected')

      const s = freshKey('shared-s')
      for (let i = 0; i < 2; i++) assert.deepEqual(await a.redis.suppressed.inc(s, 2), ALLOWED)
      assert.equal((await a.redis.suppressed.inc(s, 2)).kind, 'suppressed')
      assert.equal(await c.redis.suppressed.getSuppressionFactor(s), 1)
      assert.equal(await b.redis.suppressed.getSuppressionFactor(s), 0)
    } finally {
      await Promise.all([a.close(), b.close(), c.close()])
    }
  })

  test('a malformed URL rejects build() with TRYPEMA_REDIS', async () => {
    for (const bad of ['not a url', '', 'redis://127.0.0.1:notaport/', 'http://127.0.0.1:1/', 'redis://']) {
      await within(10_000, assert.rejects(RateLimiter.builder(bad).build(), codeError('TRYPEMA_REDIS'), JSON.stringify(bad)), bad)
    }
  })

  test('a local-only limiter throws TRYPEMA_REDIS_NOT_CONFIGURED for redis and hybrid', async () => {
    const local = await RateLimiter.builder().windowSizeSeconds(1).build()
    try {
      assert.throws(() => local.redis, codeError('TRYPEMA_REDIS_NOT_CONFIGURED'))
      assert.throws(() => local.hybrid, codeError('TRYPEMA_REDIS_NOT_CONFIGURED'))
      assert.deepEqual(local.local.absolute.inc(freshKey(), 1), ALLOWED)
    } finally {
      await local.close()
    }
  })
})

describe('redis provider: close()', { skip }, () => {
  test('after close(), every redis call rejects with TRYPEMA_CLOSED; close() is idempotent', async () => {
    const limiter = await oneSecond().build()
    const key = freshKey('closed')
    assert.deepEqual(await limiter.redis.absolute.inc(key, 5), ALLOWED)
    await limiter.close()
    await limiter.close()
    const closed = codeError('TRYPEMA_CLOSED')
    await assert.rejects(() => limiter.redis.absolute.inc(key, 5), closed)
    await assert.rejects(() => limiter.redis.absolute.isAllowed(key), closed)
    await assert.rejects(() => limiter.redis.suppressed.inc(key, 5), closed)
    await assert.rejects(() => limiter.redis.suppressed.getSuppressionFactor(key), closed)
    // Other limiters on the same server are unaffected.
    assert.deepEqual(await rl.redis.absolute.inc(freshKey(), 5), ALLOWED)
  })

  test('close() waits for the calls in flight', async () => {
    const limiter = await oneSecond().build()
    const key = freshKey('draining')
    const settled = new Array(100).fill(false)
    const all = Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        limiter.redis.absolute.inc(key, 60).then(
          (value) => {
            settled[i] = true
            return value
          },
          (error) => {
            settled[i] = true
            throw error
          },
        ),
      ),
    )
    await within(10_000, limiter.close(), 'close()')
    assert.equal(settled.filter(Boolean).length, 100, 'every call had settled when close() resolved')
    const results = await all
    const kinds = results.map((r) => (r.status === 'fulfilled' ? r.value.kind : r.reason.code))
    assert.equal(kinds.filter((k) => k === 'allowed').length, 60)
    assert.equal(kinds.filter((k) => k === 'rejected').length, 40)
    await assert.rejects(() => limiter.redis.absolute.inc(key, 60), codeError('TRYPEMA_CLOSED'))
  })
})

describe('redis provider: load', { skip }, () => {
  test('5,000 concurrent calls on 100 keys all settle, with exactly the capacity admitted per key', async () => {
    // A 10 s window, so that the whole burst certainly falls into one window.
    const limiter = await RateLimiter.builder(url).windowSizeSeconds(10).rateGroupSizeMs(10).build()
    try {
      const keys = Array.from({ length: 100 }, () => freshKey('load'))
      const calls = []
      for (let round = 0; round < 50; round++) {
        for (const key of keys) calls.push(limiter.redis.absolute.inc(key, 2).then((d) => [key, d.kind]))
      }
      const results = await within(20_000, Promise.all(calls), '5,000 calls')
      assert.equal(results.length, 5000)
      const allowed = new Map(keys.map((key) => [key, 0]))
      let rejected = 0
      for (const [key, kind] of results) {
        if (kind === 'allowed') allowed.set(key, allowed.get(key) + 1)
        else if (kind === 'rejected') rejected += 1
        else assert.fail(`unexpected kind ${kind}`)
      }
      for (const [key, count] of allowed) assert.equal(count, 20, key) // capacity 10 × 2
      assert.equal(rejected, 5000 - 100 * 20)
    } finally {
      await limiter.close()
    }
  })

})

describe('redis provider: outage', { skip: privateRedis.skip }, () => {
  before(() => privateRedis.check())

  test('when Redis stops, calls reject with TRYPEMA_REDIS; after it restarts, calls succeed again', async () => {
    // Always a private server: this test kills it.
    const own = await startRedis()
    const limiter = await oneSecond(own.url).build()
    try {
      const key = freshKey('outage')
      assert.deepEqual(await limiter.redis.absolute.inc(key, 1000), ALLOWED)

      // Calls in flight when the server dies: the server is killed as soon as the first of a
      // large batch has been answered, so the rest are on the wire or queued behind it.
      const batch = Array.from({ length: 2000 }, (_, i) =>
        i % 2 ? limiter.redis.absolute.inc(freshKey('outage'), 1000) : limiter.redis.suppressed.inc(freshKey('outage'), 1000),
      )
      const inFlight = Promise.allSettled(batch) // attaches handlers straight away
      await Promise.race(batch).catch(() => {})
      await own.stop()
      const during = await within(10_000, inFlight, 'calls in flight when Redis stopped')
      let failed = 0
      for (const result of during) {
        // A call may have been answered before the server died; otherwise it must fail cleanly.
        if (result.status === 'rejected') {
          assert.equal(result.reason.code, 'TRYPEMA_REDIS', result.reason.message)
          failed += 1
        } else {
          assert.equal(result.value.kind, 'allowed')
        }
      }
      assert.ok(failed > 0, 'some calls were still in flight when Redis stopped')

      // New calls while the server is down.
      const down = await within(
        10_000,
        Promise.allSettled([
          limiter.redis.absolute.inc(key, 1000),
          limiter.redis.absolute.isAllowed(key),
          limiter.redis.suppressed.inc(key, 1000),
          limiter.redis.suppressed.getSuppressionFactor(key),
        ]),
        'calls while Redis is down',
      )
      for (const result of down) {
        assert.equal(result.status, 'rejected')
        assert.equal(result.reason.code, 'TRYPEMA_REDIS')
        assert.match(result.reason.message, /\S/)
      }

      await own.restart()
      const deadline = Date.now() + 5000
      let decision
      let lastError
      while (Date.now() < deadline) {
        try {
          decision = await within(10_000, limiter.redis.absolute.inc(key, 1000), 'call after restart')
          break
        } catch (error) {
          lastError = error
          assert.equal(error.code, 'TRYPEMA_REDIS', error.message)
          await sleep(100)
        }
      }
      assert.deepEqual(decision, ALLOWED, `no success within 5 s of the restart (last error: ${lastError?.message})`)
      assert.deepEqual(await limiter.redis.suppressed.inc(freshKey('outage'), 5), ALLOWED)
      assert.equal(await limiter.redis.suppressed.getSuppressionFactor(freshKey('outage')), 0)
    } finally {
      await within(10_000, limiter.close(), 'close()')
      await own.stop()
    }
  })
})
