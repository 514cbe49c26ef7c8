// The local provider through the public ESM entry point.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

import { RateLimiter } from '../index.mjs'

const ALLOWED = { kind: 'allowed' }
const INDEX_JS = fileURLToPath(new URL('../index.js', import.meta.url))

let keySerial = 0
/** A key no other test has used, so tests never see each other's state. */
function freshKey(label = 'k') {
  keySerial += 1
  return `local-${label}-${process.pid}-${keySerial}`
}

/** A 1 s window with 10 ms buckets, as in the brief. */
function oneSecond(builder = RateLimiter.builder()) {
  return builder.windowSizeSeconds(1).rateGroupSizeMs(10).build()
}

/** Checks the shape and ranges of a rejection. */
function assertRejected(decision, { windowSizeSeconds = 1, capacity } = {}) {
  assert.equal(decision.kind, 'rejected', `expected a rejection, got ${JSON.stringify(decision)}`)
  assert.deepEqual(Object.keys(decision).sort(), [
    'kind',
    'remainingAfterWaiting',
    'retryAfterMs',
    'windowSizeSeconds',
  ])
  assert.equal(decision.windowSizeSeconds, windowSizeSeconds)
  assert.ok(Number.isInteger(decision.retryAfterMs), `retryAfterMs ${decision.retryAfterMs} is not an integer`)
  assert.ok(decision.retryAfterMs > 0, `retryAfterMs ${decision.retryAfterMs} must be > 0`)
  assert.ok(
    decision.retryAfterMs <= windowSizeSeconds * 1000 + 1,
    `retryAfterMs ${decision.retryAfterMs} must be <= ${windowSizeSeconds * 1000 + 1}`,
  )
  assert.ok(Number.isInteger(decision.remainingAfterWaiting))
  assert.ok(decision.remainingAfterWaiting >= 0)
  if (capacity !== undefined) assert.ok(decision.remainingAfterWaiting < Math.max(capacity, 1))
}

function isAdmitted(decision) {
  return decision.kind === 'allowed' || (decision.kind === 'suppressed' && decision.isAllowed)
}

describe('building', () => {
  test('build() returns a Promise of a RateLimiter with a frozen local provider', async () => {
    const pending = RateLimiter.builder().windowSizeSeconds(1).build()
    assert.ok(pending instanceof Promise)
    const rl = await pending
    assert.ok(rl instanceof RateLimiter)
    assert.ok(Object.isFrozen(rl.local))
    assert.equal(typeof rl.local.absolute.inc, 'function')
    assert.equal(typeof rl.local.absolute.isAllowed, 'function')
    assert.equal(typeof rl.local.suppressed.inc, 'function')
    assert.equal(typeof rl.local.suppressed.getSuppressionFactor, 'function')
    await rl.close()
  })

  test('builder setters chain on the same builder', () => {
    const builder = RateLimiter.builder()
    assert.equal(builder.windowSizeSeconds(1), builder)
    assert.equal(builder.rateGroupSizeMs(10), builder)
    assert.equal(builder.hardLimitFactor(1.5), builder)
    assert.equal(builder.suppressionFactorCacheMs(100), builder)
    assert.equal(builder.syncIntervalMs(10), builder)
    assert.equal(builder.cleanupIntervalMs(1000), builder)
    assert.equal(builder.staleAfterMs(5000), builder)
    assert.equal(builder.redisPrefix('p'), builder)
  })

  test('a RateLimiter cannot be constructed directly', () => {
    assert.throws(() => new RateLimiter(), { constructor: TypeError, message: /builder/ })
    assert.throws(() => new RateLimiter({ handle: 1 }), { constructor: TypeError })
  })

  test('with all default settings the window is 10 s', async () => {
    const rl = await RateLimiter.builder().build()
    const key = freshKey('defaults')
    // Capacity floor(10 × 0.5) = 5.
    for (let i = 0; i < 5; i++) assert.deepEqual(rl.local.absolute.inc(key, 0.5), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 0.5), { windowSizeSeconds: 10, capacity: 5 })
    await rl.close()
  })
})

describe('local absolute', () => {
  test('admits exactly floor(window × rate), then rejects', async () => {
    const rl = await oneSecond()
    for (const [rate, capacity] of [
      [5, 5],
      [7.9, 7],
      [1, 1],
      [2.5, 2],
      [100, 100],
    ]) {
      const key = freshKey(`cap${rate}`)
      for (let i = 0; i < capacity; i++) {
        assert.deepEqual(rl.local.absolute.inc(key, rate), ALLOWED, `rate ${rate}, call ${i + 1}`)
      }
      assertRejected(rl.local.absolute.inc(key, rate), { capacity })
      // A rejection records nothing: the next call is rejected too, never allowed.
      assertRejected(rl.local.absolute.inc(key, rate), { capacity })
    }
    await rl.close()
  })

  test('capacity scales with the window', async () => {
    const rl = await RateLimiter.builder().windowSizeSeconds(3).rateGroupSizeMs(10).build()
    const key = freshKey('w3')
    // floor(3 × 2.5) = 7
    for (let i = 0; i < 7; i++) assert.deepEqual(rl.local.absolute.inc(key, 2.5), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 2.5), { windowSizeSeconds: 3, capacity: 7 })
    await rl.close()
  })

  test('a rate below 1 / window gives capacity 0: every call is rejected', async () => {
    const rl = await oneSecond()
    const key = freshKey('zero-cap')
    assertRejected(rl.local.absolute.inc(key, 0.5))
    assertRejected(rl.local.absolute.inc(key, 0.5))
    await rl.close()
  })

  test('a rejection has exactly the documented fields, with sane values', async () => {
    const rl = await RateLimiter.builder().windowSizeSeconds(1).rateGroupSizeMs(1000).build()
    const key = freshKey('shape')
    for (let i = 0; i < 3; i++) rl.local.absolute.inc(key, 3)
    const rejected = rl.local.absolute.inc(key, 3)
    assertRejected(rejected, { capacity: 3 })
    // One bucket holds everything, so nothing remains once it has left the window.
    assert.equal(rejected.remainingAfterWaiting, 0)
    await rl.close()
  })

  test('count defaults to 1', async () => {
    const rl = await oneSecond()
    const key = freshKey('default-count')
    assert.deepEqual(rl.local.absolute.inc(key, 4), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 4, 2), ALLOWED) // 3 of 4 used
    assert.deepEqual(rl.local.absolute.inc(key, 4), ALLOWED) // 4 of 4
    assertRejected(rl.local.absolute.inc(key, 4))
    // Explicit undefined is the default too.
    const other = freshKey('default-count-undef')
    assert.deepEqual(rl.local.absolute.inc(other, 1, undefined), ALLOWED)
    assertRejected(rl.local.absolute.inc(other, 1, undefined))
    await rl.close()
  })

  test('count > 1 consumes that much capacity; an oversized count records nothing', async () => {
    const rl = await oneSecond()
    const exact = freshKey('count-exact')
    assert.deepEqual(rl.local.absolute.inc(exact, 5, 5), ALLOWED)
    assertRejected(rl.local.absolute.inc(exact, 5, 1))

    const over = freshKey('count-over')
    const tooMany = rl.local.absolute.inc(over, 5, 6)
    assertRejected(tooMany)
    // It can never fit: told to wait exactly one window.
    assert.equal(tooMany.retryAfterMs, 1000)
    assert.deepEqual(rl.local.absolute.inc(over, 5, 5), ALLOWED, 'the rejected 6 must not have been recorded')
    assert.equal(rl.local.absolute.inc(over, 5, 6).retryAfterMs, 1000, 'also with state')

    const partial = freshKey('count-partial')
    assert.deepEqual(rl.local.absolute.inc(partial, 5, 3), ALLOWED)
    assertRejected(rl.local.absolute.inc(partial, 5, 3), { capacity: 5 })
    assert.deepEqual(rl.local.absolute.inc(partial, 5, 2), ALLOWED)
    assertRejected(rl.local.absolute.inc(partial, 5, 1))
    await rl.close()
  })

  test('count 0 is allowed, even at the limit, and records nothing', async () => {
    const rl = await oneSecond()
    const key = freshKey('count0')
    assert.deepEqual(rl.local.absolute.inc(key, 2, 2), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 2, 0), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 2, 0), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 2, 1))

    const untouched = freshKey('count0-fresh')
    for (let i = 0; i < 10; i++) assert.deepEqual(rl.local.absolute.inc(untouched, 3, 0), ALLOWED)
    for (let i = 0; i < 3; i++) assert.deepEqual(rl.local.absolute.inc(untouched, 3), ALLOWED)
    assertRejected(rl.local.absolute.inc(untouched, 3))
    await rl.close()
  })

  test('isAllowed: allowed for an unknown key, records nothing, rejects once full', async () => {
    const rl = await oneSecond()
    const key = freshKey('is-allowed')
    for (let i = 0; i < 20; i++) assert.deepEqual(rl.local.absolute.isAllowed(key), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 3), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 3), ALLOWED)
    assert.deepEqual(rl.local.absolute.isAllowed(key), ALLOWED, '2 of 3 used: one more fits')
    assert.deepEqual(rl.local.absolute.inc(key, 3), ALLOWED, 'isAllowed must not have recorded anything')
    const checked = rl.local.absolute.isAllowed(key)
    assertRejected(checked, { capacity: 3 })
    assertRejected(rl.local.absolute.inc(key, 3))
    await rl.close()
  })

  test('keys are isolated from each other', async () => {
    const rl = await oneSecond()
    const a = freshKey('iso-a')
    const b = freshKey('iso-b')
    for (let i = 0; i < 2; i++) rl.local.absolute.inc(a, 2)
    assertRejected(rl.local.absolute.inc(a, 2))
    assertRejected(rl.local.absolute.isAllowed(a))
    assert.deepEqual(rl.local.absolute.isAllowed(b), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(b, 2), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(b, 2), ALLOWED)
    assertRejected(rl.local.absolute.inc(b, 2))
    // Keys that differ only in case, or by a prefix, are distinct too.
    const upper = a.toUpperCase()
    assert.deepEqual(rl.local.absolute.inc(upper, 2), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(`${a}x`, 2), ALLOWED)
    await rl.close()
  })

  test('absolute and suppressed state of one key are separate', async () => {
    const rl = await oneSecond()
    const key = freshKey('strategies')
    rl.local.absolute.inc(key, 2, 2)
    assertRejected(rl.local.absolute.inc(key, 2))
    assert.equal(rl.local.suppressed.getSuppressionFactor(key), 0)
    assert.deepEqual(rl.local.suppressed.inc(key, 2), ALLOWED)
    await rl.close()
  })

  test("the first call fixes a key's rate (sticky limit)", async () => {
    const rl = await oneSecond()
    const key = freshKey('sticky')
    assert.deepEqual(rl.local.absolute.inc(key, 2), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(key, 100), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 100), { capacity: 2 })
    await rl.close()
  })

  test('once the window has passed, the key is allowed again', async () => {
    const rl = await oneSecond()
    const key = freshKey('expiry')
    for (let i = 0; i < 3; i++) assert.deepEqual(rl.local.absolute.inc(key, 3), ALLOWED)
    const rejected = rl.local.absolute.inc(key, 3)
    assertRejected(rejected, { capacity: 3 })
    await sleep(rejected.retryAfterMs + 30)
    assert.deepEqual(rl.local.absolute.isAllowed(key), ALLOWED)
    for (let i = 0; i < 3; i++) assert.deepEqual(rl.local.absolute.inc(key, 3), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 3))
    await rl.close()
  })

  test('only the oldest bucket frees up: remainingAfterWaiting counts the rest', async () => {
    const rl = await oneSecond()
    const key = freshKey('buckets')
    assert.deepEqual(rl.local.absolute.inc(key, 5, 3), ALLOWED)
    await sleep(400) // far more than the 10 ms bucket size: the next call starts a new bucket
    assert.deepEqual(rl.local.absolute.inc(key, 5, 2), ALLOWED)
    const rejected = rl.local.absolute.inc(key, 5)
    assertRejected(rejected, { capacity: 5 })
    assert.equal(rejected.remainingAfterWaiting, 2)
    // The oldest bucket started at least ~400 ms ago, so it leaves well before a full window.
    assert.ok(rejected.retryAfterMs <= 1001 - 390, `retryAfterMs ${rejected.retryAfterMs}`)
    await sleep(rejected.retryAfterMs + 30)
    // The first bucket (3) has left; the second (2) is still in the window.
    assert.deepEqual(rl.local.absolute.inc(key, 5, 3), ALLOWED)
    assertRejected(rl.local.absolute.inc(key, 5, 1))
    await rl.close()
  })

  test('the reported window is the configured one', async () => {
    for (const windowSizeSeconds of [1, 2, 60, 86_400]) {
      const rl = await RateLimiter.builder().windowSizeSeconds(windowSizeSeconds).build()
      const rejected = rl.local.absolute.inc(freshKey('window'), 1e-9)
      assertRejected(rejected, { windowSizeSeconds })
      await rl.close()
    }
  })

  test('windows up to 10^9 s are reported as configured; longer ones are refused by build()', async () => {
    const rl = await RateLimiter.builder().windowSizeSeconds(1e9).build()
    const rejected = rl.local.absolute.inc(freshKey('huge-window'), 1e-9, 2 ** 40)
    await rl.close()
    assert.equal(rejected.kind, 'rejected')
    assert.equal(rejected.windowSizeSeconds, 1e9)
    assert.equal(rejected.retryAfterMs, 1e12)
    for (const huge of [1e9 + 1, 2 ** 32 + 5]) {
      await assert.rejects(RateLimiter.builder().windowSizeSeconds(huge).build(), { code: 'TRYPEMA_INVALID_WINDOW_SIZE' })
    }
  })
})

describe('local suppressed', () => {
  test('allowed under the soft limit, then suppressed; hard limit 1× declines everything', async () => {
    const rl = await oneSecond()
    const key = freshKey('sup')
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(rl.local.suppressed.inc(key, 5), ALLOWED, `call ${i + 1} is under the soft limit`)
    }
    for (let i = 0; i < 5; i++) {
      const decision = rl.local.suppressed.inc(key, 5)
      assert.deepEqual(Object.keys(decision).sort(), ['isAllowed', 'kind', 'suppressionFactor'])
      assert.equal(decision.kind, 'suppressed')
      assert.equal(typeof decision.isAllowed, 'boolean')
      // Default hard limit factor 1: the hard ceiling equals the soft one, so f = 1.
      assert.equal(decision.suppressionFactor, 1)
      assert.equal(decision.isAllowed, false)
    }
    assert.equal(rl.local.suppressed.getSuppressionFactor(key), 1)
    await rl.close()
  })

  test('with hardLimitFactor 2, admissions stay between the soft and hard capacity', async () => {
    const rl = await oneSecond(RateLimiter.builder().hardLimitFactor(2))
    const key = freshKey('sup-hard')
    const decisions = Array.from({ length: 100 }, () => rl.local.suppressed.inc(key, 5))
    for (let i = 0; i < 5; i++) assert.deepEqual(decisions[i], ALLOWED)
    for (const decision of decisions.slice(5)) {
      assert.equal(decision.kind, 'suppressed')
      assert.equal(typeof decision.isAllowed, 'boolean')
      assert.equal(typeof decision.suppressionFactor, 'number')
      assert.ok(decision.suppressionFactor >= 0 && decision.suppressionFactor <= 1, `f = ${decision.suppressionFactor}`)
      if (decision.isAllowed) assert.ok(decision.suppressionFactor < 1, 'f = 1 must decline')
    }
    const admitted = decisions.filter(isAdmitted).length
    assert.ok(admitted >= 5, `admitted ${admitted}`)
    assert.ok(admitted <= 10, `admitted ${admitted}, more than the hard capacity 10`)
    const factor = rl.local.suppressed.getSuppressionFactor(key)
    assert.ok(factor > 0 && factor <= 1, `factor ${factor}`)
    await rl.close()
  })

  test('count > 1 and count 0', async () => {
    const rl = await oneSecond()
    const key = freshKey('sup-count')
    assert.deepEqual(rl.local.suppressed.inc(key, 5, 5), ALLOWED)
    assert.deepEqual(rl.local.suppressed.inc(key, 5, 0), ALLOWED)
    const over = rl.local.suppressed.inc(key, 5, 1)
    assert.equal(over.kind, 'suppressed')
    assert.equal(over.isAllowed, false)
    await rl.close()
  })

  test('getSuppressionFactor: 0 for an unknown key, in [0, 1] otherwise, and records nothing', async () => {
    const rl = await oneSecond()
    const key = freshKey('factor')
    for (let i = 0; i < 10; i++) assert.equal(rl.local.suppressed.getSuppressionFactor(key), 0)
    // Nothing was recorded above: the full soft capacity is still available.
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(rl.local.suppressed.inc(key, 3), ALLOWED)
      const factor = rl.local.suppressed.getSuppressionFactor(key)
      assert.equal(typeof factor, 'number')
      assert.ok(factor >= 0 && factor <= 1, `factor ${factor}`)
    }
    rl.local.suppressed.inc(key, 3)
    const factor = rl.local.suppressed.getSuppressionFactor(key)
    assert.ok(factor > 0 && factor <= 1, `factor over the limit ${factor}`)
    assert.equal(rl.local.suppressed.getSuppressionFactor(freshKey('factor-other')), 0)
    await rl.close()
  })
})

describe('calling conventions', () => {
  test('local methods are synchronous: they return plain values, not Promises', async () => {
    const rl = await oneSecond()
    const key = freshKey('sync')
    const results = [
      rl.local.absolute.inc(key, 5),
      rl.local.absolute.inc(key, 5, 1),
      rl.local.absolute.isAllowed(key),
      rl.local.suppressed.inc(key, 5),
      rl.local.suppressed.inc(key, 5, 1),
      rl.local.suppressed.getSuppressionFactor(key),
    ]
    for (const result of results) {
      assert.ok(!(result instanceof Promise))
      assert.equal(typeof result?.then, 'undefined')
    }
    assert.deepEqual(results.slice(0, 5), [ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED])
    assert.equal(results[5], 0)
    await rl.close()
  })

  test('redis and hybrid throw TRYPEMA_REDIS_NOT_CONFIGURED without a Redis URL', async () => {
    const rl = await oneSecond()
    const notConfigured = { constructor: Error, code: 'TRYPEMA_REDIS_NOT_CONFIGURED', message: /\S/ }
    assert.throws(() => rl.redis, notConfigured)
    assert.throws(() => rl.hybrid, notConfigured)
    assert.throws(() => rl.redis.absolute.inc('k', 1), notConfigured)
    // The local provider is unaffected.
    assert.deepEqual(rl.local.absolute.inc(freshKey('after-redis'), 1), ALLOWED)
    await rl.close()
  })

  test('after close(), every call throws TRYPEMA_CLOSED; a second close() is harmless', async () => {
    const rl = await oneSecond()
    const key = freshKey('closed')
    rl.local.absolute.inc(key, 5)
    const closing = rl.close()
    assert.ok(closing instanceof Promise)
    assert.equal(await closing, undefined)
    const closed = { constructor: Error, code: 'TRYPEMA_CLOSED', message: /\S/ }
    assert.throws(() => rl.local.absolute.inc(key, 5), closed)
    assert.throws(() => rl.local.absolute.inc(freshKey('never-seen'), 5, 2), closed)
    assert.throws(() => rl.local.absolute.isAllowed(key), closed)
    assert.throws(() => rl.local.suppressed.inc(key, 5), closed)
    assert.throws(() => rl.local.suppressed.getSuppressionFactor(key), closed)
    await rl.close()
    await assert.doesNotReject(() => rl.close())
    assert.throws(() => rl.local.absolute.inc(key, 5), closed)
  })

  test('two limiters are independent', async () => {
    const first = await oneSecond()
    const second = await RateLimiter.builder().windowSizeSeconds(2).rateGroupSizeMs(10).build()
    const key = freshKey('two')
    for (let i = 0; i < 2; i++) assert.deepEqual(first.local.absolute.inc(key, 2), ALLOWED)
    assertRejected(first.local.absolute.inc(key, 2), { windowSizeSeconds: 1 })
    // Same key and rate in the other limiter: its own state, its own (2 s) window.
    for (let i = 0; i < 4; i++) assert.deepEqual(second.local.absolute.inc(key, 2), ALLOWED)
    assertRejected(second.local.absolute.inc(key, 2), { windowSizeSeconds: 2 })
    first.local.suppressed.inc(key, 1, 5)
    assert.equal(second.local.suppressed.getSuppressionFactor(key), 0)

    // Closing one leaves the other working.
    await first.close()
    assert.throws(() => first.local.absolute.isAllowed(key), { code: 'TRYPEMA_CLOSED' })
    assertRejected(second.local.absolute.isAllowed(key), { windowSizeSeconds: 2 })
    assert.deepEqual(second.local.absolute.inc(freshKey('two-after'), 2), ALLOWED)
    await second.close()
  })

  test('interleaved rejections from two limiters keep their own hints', async () => {
    const a = await oneSecond()
    const b = await oneSecond()
    const keyA = freshKey('hint-a')
    const keyB = freshKey('hint-b')
    // keyA: buckets 2 + 1 (remaining 1); keyB: one bucket of 4 (remaining 0).
    a.local.absolute.inc(keyA, 3, 2)
    b.local.absolute.inc(keyB, 4, 4)
    await sleep(30)
    a.local.absolute.inc(keyA, 3, 1)
    const fromA = a.local.absolute.inc(keyA, 3)
    const fromB = b.local.absolute.inc(keyB, 4)
    assert.equal(fromB.remainingAfterWaiting, 0)
    assert.equal(fromA.remainingAfterWaiting, 1, 'a later rejection must not change an earlier decision')
    await a.close()
    await b.close()
  })

  test(
    'a provider object keeps working while only it is referenced (no close, after GC)',
    () => {
      const script = `
        const { RateLimiter } = require(${JSON.stringify(INDEX_JS)})
        ;(async () => {
          const absolute = (await RateLimiter.builder().windowSizeSeconds(1).build()).local.absolute
          const before = absolute.inc('k', 100).kind
          for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setTimeout(r, 10)) }
          let after
          try { after = absolute.inc('k', 100).kind } catch (error) { after = error.code }
          console.log(before + ' ' + after)
        })()`
      const child = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 10_000 })
      assert.equal(child.status, 0, child.stderr)
      assert.equal(child.stdout.trim(), 'allowed allowed')
    },
  )
})
