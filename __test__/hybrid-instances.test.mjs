// The hybrid provider as users run it: several instances, each a process of its own, on one key,
// at the limits people configure (capacity 50), timed in Redis server time. These are the
// promises of the README's hybrid section: no refusals under the limit, a fair share under
// overload, leases returned on close, a bounded amount stranded by a crash, nothing reserved by a
// call that cannot fit, and never more than the capacity in any window.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'

import { RateLimiter } from '../index.js'
import { busiest, merged, perWindow, runInstances, startInstances } from './instances.mjs'
import { testRedisUrl } from './redis-url.mjs'

let url
before(() => {
  url = testRedisUrl()
})

const unique = (label) => `${label}${randomBytes(6).toString('hex')}`

/** A config for fixtures/instance.mjs on `key` under `prefix`. */
function instance(prefix, key, settings, calls, afterwards = 'close') {
  return { url, prefix, key, provider: 'hybrid', strategy: 'absolute', ...settings, calls, afterwards }
}

// W = 2 s, rate 25/s: capacity 50, leases of 100 ms, buckets of 10 ms. Admission times carry up
// to ~50 ms of measurement slack (receipt vs decision, clock offset), so sliding windows are
// checked over W - G - 50 ms: the window the limiter promises, minus what the test cannot see.
const SHORT = { window: 2, rate: 25, groupMs: 10 }
const CAPACITY = 50
const CHECKED_SPAN_MS = 2000 - 10 - 50

function summary(reports) {
  return reports.map((r) => ({ allowed: r.allowed.length, rejected: r.rejected, errors: r.errors.length }))
}

test('two instances at 1 call/s each on capacity 50 (W = 10 s, rate 5) are never refused', async () => {
  const prefix = unique('hiunder')
  const calls = { perSecond: 1, durationMs: 12_000 }
  const reports = await runInstances([
    instance(prefix, 'user_123', { window: 10, rate: 5 }, calls),
    instance(prefix, 'user_123', { window: 10, rate: 5 }, calls),
  ])
  const errors = reports.flatMap((r) => r.errors)
  assert.deepEqual(errors, [], 'no errors')
  assert.deepEqual(
    reports.map((r) => r.rejected),
    [0, 0],
    `no refusals while the key is under its limit: ${JSON.stringify(summary(reports))}`,
  )
  assert.equal(merged(reports).length, 24)
})

test('two equal instances under 2x overload share fairly and use the capacity, never exceeding it', async () => {
  const prefix = unique('hifair')
  const calls = { perSecond: 25, durationMs: 7000 }
  const reports = await runInstances([instance(prefix, 'k', SHORT, calls), instance(prefix, 'k', SHORT, calls)])
  assert.deepEqual(reports.flatMap((r) => r.errors), [])
  const all = merged(reports)
  const shares = reports.map((r) => r.allowed.length / all.length)
  for (const share of shares) {
    assert.ok(share >= 0.4 && share <= 0.6, `each instance gets 40-60% of what is admitted: ${JSON.stringify(summary(reports))}`)
  }
  const windows = perWindow(all, all[0], 2000, 3)
  for (const count of windows) {
    assert.ok(count <= CAPACITY && count >= 0.9 * CAPACITY, `per window ${windows}: <= 50 and >= 45`)
  }
  const worst = busiest(all, CHECKED_SPAN_MS)
  assert.ok(worst.count <= CAPACITY, `at most 50 in any ${CHECKED_SPAN_MS} ms of server time, got ${worst.count}`)
})

test('an instance that makes one call and closes leaves the rest of the window to the others', async () => {
  const prefix = unique('hiclose')
  const settings = { window: 10, rate: 5 }
  const [first] = await runInstances([instance(prefix, 'user_123', settings, { count: 1 }, 'close')])
  assert.equal(first.allowed.length, 1)
  const [second] = await runInstances([instance(prefix, 'user_123', settings, { burst: 50, concurrency: 5 })])
  assert.ok(second.allowed.length >= 45, `the second instance admits >= 90% of 50, got ${second.allowed.length}`)
  assert.equal(second.allowed.length, 49, 'exactly what the first one left')
})

test('an instance killed while holding leases strands at most the stated bound', async () => {
  const prefix = unique('hikill')
  const settings = { window: 10, rate: 5 }
  const [holder] = await startInstances([instance(prefix, 'k', settings, { burst: 10, concurrency: 2 }, 'hold')])
  const held = await holder.result()
  await holder.holding()
  await holder.kill()
  const [other] = await runInstances([instance(prefix, 'k', settings, { burst: 60, concurrency: 5 })])
  // Stated bound: two leases of at most floor(C / 16) units each (C = 50: 3 + 3).
  const bound = 2 * Math.floor(50 / 16)
  assert.ok(
    other.allowed.length >= 50 - held.allowed.length - bound,
    `killed instance admitted ${held.allowed.length}; the other admitted ${other.allowed.length}, ` +
      `at least 50 - ${held.allowed.length} - ${bound} expected`,
  )
})

test('a count larger than the capacity reserves nothing and is rejected like the redis provider', async () => {
  const prefix = unique('hibig')
  const a = await RateLimiter.builder(url).redisPrefix(prefix).windowSizeSeconds(10).build()
  const b = await RateLimiter.builder(url).redisPrefix(prefix).windowSizeSeconds(10).build()
  try {
    const hybrid = await a.hybrid.absolute.inc('k', 5, 51)
    const redis = await b.redis.absolute.inc('other', 5, 51)
    assert.equal(hybrid.kind, 'rejected')
    assert.deepEqual(hybrid, { ...redis }, 'the same rejection as the redis provider (retry after a whole window)')
    assert.equal(hybrid.retryAfterMs, 10_000)
    assert.deepEqual(await b.redis.absolute.inc('k', 5), { kind: 'allowed' })
    assert.equal((await b.redis.absolute.get('k', 5)).remaining, 49, 'nothing was reserved for the oversized call')
  } finally {
    await Promise.all([a.close(), b.close()])
  }
})

test('ten instances at 0.85 x rate admit what they offer', async () => {
  const prefix = unique('hiten')
  const calls = { perSecond: (25 * 0.85) / 10, durationMs: 6000 }
  const reports = await runInstances(Array.from({ length: 10 }, () => instance(prefix, 'k', SHORT, calls)))
  assert.deepEqual(reports.flatMap((r) => r.errors), [])
  const offered = reports.reduce((sum, r) => sum + r.allowed.length + r.rejected, 0)
  const admitted = merged(reports).length
  assert.ok(admitted / offered >= 0.84 / 0.85, `admitted ${admitted} of ${offered} offered (>= 84% of the rate)`)
})

for (const count of [1, 3, 10]) {
  test(`saturation with ${count} instance(s): >= 90% of the capacity used per window, never more`, async () => {
    const prefix = unique(`hisat${count}`)
    const calls = { perSecond: 50 / count, durationMs: 7000 }
    const reports = await runInstances(Array.from({ length: count }, () => instance(prefix, 'k', SHORT, calls)))
    assert.deepEqual(reports.flatMap((r) => r.errors), [])
    const all = merged(reports)
    const windows = perWindow(all, all[0], 2000, 3)
    for (const used of windows) assert.ok(used >= 45 && used <= CAPACITY, `per window: ${windows}`)
    const worst = busiest(all, CHECKED_SPAN_MS)
    assert.ok(worst.count <= CAPACITY, `at most 50 in any ${CHECKED_SPAN_MS} ms, got ${worst.count}`)
  })
}

test('hybrid suppressed: three instances bursting never admit more than the hard ceiling', async () => {
  const prefix = unique('hisup')
  const settings = { ...SHORT, hardLimitFactor: 1.5, strategy: 'suppressed' }
  const reports = await runInstances(
    Array.from({ length: 3 }, () => ({ ...instance(prefix, 'k', settings, { burst: 200, concurrency: 8 }) })),
  )
  assert.deepEqual(reports.flatMap((r) => r.errors), [])
  const all = merged(reports)
  const worst = busiest(all, CHECKED_SPAN_MS)
  // Soft capacity S = 50, hard H = 75: every admission comes from quota reserved under H.
  assert.ok(worst.count <= 75, `at most H = 75 admitted in any window, got ${worst.count}`)
  assert.ok(all.length >= 50, `at least the soft capacity is admitted, got ${all.length}`)
})
