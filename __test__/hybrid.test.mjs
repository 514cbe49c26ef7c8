// The hybrid provider through the public API: decisions, keys, validation, the no-I/O fast path,
// sharing a limit with the `redis` provider, leases given back, the suppressed strategy under
// load from two instances, Redis trouble, close() and exiting without close().
//
// Leases follow demand (notes/semantics.md): a key's first lease is about 2 units, capped at
// floor(capacity / 16) beyond what callers wait for, so below capacity 16 every call is decided
// by Redis, exactly like the redis provider. Tests that rely on a lease warm the key with a
// burst of concurrent calls first, and read how many units the instance holds from its
// metrics (leased - returned - admitted). A lease is used locally for at most
// lease_ms = min(W, max(W / 20, 4 x syncIntervalMs)).
//
// Shared Redis: TRYPEMA_TEST_REDIS_URL. Tests that stop Redis or read its statistics start a
// private redis-server. A missing Redis fails the tests (TRYPEMA_TEST_ALLOW_SKIP=1 skips them).
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { spawn } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'

import { RateLimiter } from '../index.mjs'
import { startRedis } from '../scripts/redis-server.mjs'
import { ALLOWED, codeError, privateRedis, sharedRedis, typeError, unique, waitFor, within } from './support.mjs'

const skip = sharedRedis.skip
const skipPrivate = sharedRedis.skip || privateRedis.skip

const INDEX_MJS = JSON.stringify(new URL('../index.mjs', import.meta.url).href)

/** lease_ms for a window of `windowSeconds` and the default sync interval (10 ms). */
function leaseMs(windowSeconds, syncIntervalMs = 10) {
  return Math.min(windowSeconds * 1000, Math.max((windowSeconds * 1000) / 20, 4 * syncIntervalMs))
}

/** Whether `promise` settles within two microtask ticks, i.e. without waiting for any I/O. */
async function settlesWithinMicrotasks(promise) {
  let settled = false
  promise.then(
    () => (settled = true),
    () => (settled = true),
  )
  await Promise.resolve()
  await Promise.resolve()
  return settled
}

/** Calls `fn`, asserting it returns a Promise and does not throw synchronously. */
function promiseOf(fn, what) {
  let result
  try {
    result = fn()
  } catch (error) {
    assert.fail(`${what} threw synchronously (${error?.name} ${error?.code ?? ''}: ${error?.message})`)
  }
  assert.ok(result instanceof Promise, `${what} returned ${typeof result}, not a Promise`)
  return result
}

/** One command on a fresh connection (a tiny RESP client for statistics). */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    let buffer = Buffer.alloc(0)
    socket.setTimeout(2000, () => {
      socket.destroy()
      reject(new Error(`redis command ${args[0]} timed out`))
    })
    socket.on('error', reject)
    socket.on('connect', () => {
      const parts = [`*${args.length}\r\n`]
      for (const arg of args) parts.push(`$${Buffer.byteLength(String(arg))}\r\n${arg}\r\n`)
      socket.write(parts.join(''))
    })
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk])
      const lineEnd = buffer.indexOf('\r\n')
      if (lineEnd < 0) return
      const type = String.fromCharCode(buffer[0])
      const line = buffer.subarray(1, lineEnd).toString()
      let reply
      if (type === '+' || type === ':') reply = line
      else if (type === '-') reply = new Error(line)
      else if (type === '$') {
        const length = Number(line)
        if (length < 0) reply = null
        else if (buffer.length < lineEnd + 2 + length + 2) return
        else reply = buffer.subarray(lineEnd + 2, lineEnd + 2 + length).toString()
      } else reply = new Error(`unsupported reply type ${type}`)
      socket.destroy()
      if (reply instanceof Error) reject(reply)
      else resolve(reply)
    })
  })
}

/** `calls` of one command from INFO commandstats (0 when it has not run). */
async function commandCalls(port, command) {
  const info = await redisCommand(port, 'INFO', 'commandstats')
  const match = new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(info)
  return match ? Number(match[1]) : 0
}

function hybridAbsoluteMetrics(limiter) {
  return limiter.metrics().decisions.find((d) => d.provider === 'hybrid' && d.strategy === 'absolute')
}

/**
 * Units of hybrid absolute leases this limiter holds unused: leased - returned - admitted.
 * Exact when every admitted call had count 1 and only the absolute strategy took leases.
 */
function heldUnits(limiter) {
  const m = limiter.metrics()
  return m.hybridLeasedUnits - m.hybridReturnedUnits - hybridAbsoluteMetrics(limiter).allowed
}

/**
 * Warms `key` with bursts of `burst` concurrent calls (count 1, all admitted) until the limiter
 * holds at least `units` unused lease units; returns how many it holds.
 */
async function warmLease(limiter, key, rate, units, burst = 50) {
  for (let round = 0; round < 10; round++) {
    const decisions = await Promise.all(Array.from({ length: burst }, () => limiter.hybrid.absolute.inc(key, rate)))
    assert.deepEqual(decisions, Array(burst).fill(ALLOWED), 'warm-up calls are admitted')
    const held = heldUnits(limiter)
    if (held >= units) return held
  }
  assert.fail(`the key holds only ${heldUnits(limiter)} lease units after 10 bursts of ${burst} (wanted ${units})`)
}

let rl10 // window 10 s
let rl1 // window 1 s

before(async () => {
  sharedRedis.check()
  if (skip) return
  rl10 = await RateLimiter.builder(sharedRedis.url).redisPrefix(unique('hy')).windowSizeSeconds(10).build()
  rl1 = await RateLimiter.builder(sharedRedis.url).redisPrefix(unique('hy')).windowSizeSeconds(1).build()
})

after(async () => {
  await rl10?.close()
  await rl1?.close()
})

/**
 * A rejection with the hints the redis provider gives: retryAfterMs until the oldest bucket
 * leaves the window, which for quota reserved as a lease is at most W + lease_ms (the lease's
 * bucket starts when the lease ends), plus 1 ms.
 */
function assertRejected(d, windowSizeSeconds, capacity, what) {
  assert.equal(d.kind, 'rejected', `${what}: ${JSON.stringify(d)}`)
  assert.deepEqual(Object.keys(d).sort(), ['kind', 'remainingAfterWaiting', 'retryAfterMs', 'windowSizeSeconds'])
  assert.equal(d.windowSizeSeconds, windowSizeSeconds)
  assert.ok(Number.isInteger(d.retryAfterMs), `${what}: retryAfterMs ${d.retryAfterMs}`)
  const limit = windowSizeSeconds * 1000 + leaseMs(windowSizeSeconds) + 1
  assert.ok(d.retryAfterMs > 0 && d.retryAfterMs <= limit, `${what}: retryAfterMs ${d.retryAfterMs} not in (0, ${limit}]`)
  assert.ok(Number.isInteger(d.remainingAfterWaiting), `${what}: remainingAfterWaiting ${d.remainingAfterWaiting}`)
  assert.ok(
    d.remainingAfterWaiting >= 0 && d.remainingAfterWaiting < capacity,
    `${what}: remainingAfterWaiting ${d.remainingAfterWaiting} not in [0, ${capacity})`,
  )
}

describe('hybrid absolute: decisions', { skip }, () => {
  test('admits floor(window × rate), then rejects with back-off hints (window 10 s)', async () => {
    const key = unique('cap10')
    // floor(10 × 0.57) = 5
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await rl10.hybrid.absolute.inc(key, 0.57), ALLOWED, `call ${i + 1}`)
    }
    for (let i = 0; i < 3; i++) {
      assertRejected(await rl10.hybrid.absolute.inc(key, 0.57), 10, 5, `call ${6 + i}`)
    }
    // The rate is sticky: a higher one on a later call does not raise the capacity.
    assertRejected(await rl10.hybrid.absolute.inc(key, 1000), 10, 5, 'call with a higher rate')
    assertRejected(await rl10.hybrid.absolute.isAllowed(key), 10, 5, 'isAllowed')
  })

  test('admits floor(window × rate), then rejects with back-off hints (window 1 s)', async () => {
    const key = unique('cap1')
    // floor(1 × 5.7) = 5
    const decisions = []
    for (let i = 0; i < 8; i++) decisions.push(await rl1.hybrid.absolute.inc(key, 5.7))
    assert.deepEqual(decisions.slice(0, 5), Array(5).fill(ALLOWED))
    for (const [i, d] of decisions.slice(5).entries()) assertRejected(d, 1, 5, `call ${6 + i}`)
  })

  test('count defaults to 1; larger counts take that much capacity; a count above the capacity waits a whole window', async () => {
    const key = unique('count')
    // capacity floor(10 × 1) = 10
    assert.deepEqual(await rl10.hybrid.absolute.inc(key, 1), ALLOWED)
    assert.deepEqual(await rl10.hybrid.absolute.inc(key, 1, 4), ALLOWED)
    assert.deepEqual(await rl10.hybrid.absolute.inc(key, 1, 5), ALLOWED)
    assertRejected(await rl10.hybrid.absolute.inc(key, 1), 10, 10, 'default count on a full window')
    assertRejected(await rl10.hybrid.absolute.inc(key, 1, 2), 10, 10, 'count 2 on a full window')

    // A count above the capacity is rejected exactly as the redis provider rejects it (retry
    // after a whole window), reserves nothing, and the capacity is still all there.
    const other = unique('count')
    const tooBig = await rl10.hybrid.absolute.inc(other, 1, 11)
    assert.deepEqual(tooBig, await rl10.redis.absolute.inc(unique('count'), 1, 11))
    assert.deepEqual(tooBig, { kind: 'rejected', windowSizeSeconds: 10, retryAfterMs: 10_000, remainingAfterWaiting: 0 })
    assert.equal((await rl10.redis.absolute.get(other, 1)).remaining, 10, 'nothing reserved for the oversized call')
    assert.deepEqual(await rl10.hybrid.absolute.inc(other, 1, 10), ALLOWED, 'count 10 after a rejected 11')
    assertRejected(await rl10.hybrid.absolute.inc(other, 1), 10, 10, 'one more')
    // On a key with state, too: count > capacity is told to wait a whole window.
    const stateful = await rl10.hybrid.absolute.inc(other, 1, 11)
    assert.equal(stateful.retryAfterMs, 10_000, JSON.stringify(stateful))

    // Counts that fit exactly, after part of the window is used by calls of count 1.
    const third = unique('count')
    for (let i = 0; i < 7; i++) assert.deepEqual(await rl10.hybrid.absolute.inc(third, 1), ALLOWED)
    assertRejected(await rl10.hybrid.absolute.inc(third, 1, 4), 10, 10, '7 + 4 > 10')
    assert.deepEqual(await rl10.hybrid.absolute.inc(third, 1, 3), ALLOWED, '7 + 3 = 10')
    assertRejected(await rl10.hybrid.absolute.inc(third, 1), 10, 10, 'full')
  })

  test('hybrid and redis providers on the same key share one limit, exactly', async () => {
    // Capacity floor(10 × 1) = 10 < 16: no lease goes beyond what a call asks for, so every
    // hybrid call is decided by Redis and the split is exact, call by call.
    const key = unique('shared')
    for (let i = 0; i < 4; i++) assert.deepEqual(await rl10.redis.absolute.inc(key, 1), ALLOWED, `redis ${i + 1}`)
    for (let i = 0; i < 6; i++) assert.deepEqual(await rl10.hybrid.absolute.inc(key, 1), ALLOWED, `hybrid ${i + 1}: redis left 6`)
    assertRejected(await rl10.hybrid.absolute.inc(key, 1), 10, 10, 'hybrid once the window is full')
    assertRejected(await rl10.redis.absolute.inc(key, 1), 10, 10, 'redis after hybrid filled the window')
    assert.equal((await rl10.redis.absolute.isAllowed(key)).kind, 'rejected')

    // Hybrid first (window 1 s, capacity 10): redis gets exactly what hybrid did not use, at once.
    const second = unique('shared')
    for (let i = 0; i < 3; i++) assert.deepEqual(await rl1.hybrid.absolute.inc(second, 10), ALLOWED, `hybrid ${i + 1}`)
    for (let i = 0; i < 7; i++) assert.deepEqual(await rl1.redis.absolute.inc(second, 10), ALLOWED, `redis ${i + 1}: hybrid left 7`)
    assertRejected(await rl1.redis.absolute.inc(second, 10), 1, 10, 'redis once the window is full')
    assertRejected(await rl1.hybrid.absolute.inc(second, 10), 1, 10, 'hybrid after redis filled the window')
  })

  test('a lease holds quota beyond what was admitted only until it ends or the limiter closes: then redis gets exactly the rest', async (t) => {
    // Capacity floor(10 × 100) = 1000; leases up to 1000 / 16 = 62 units beyond what is asked.
    for (const how of ['close()', 'the lease ending']) {
      const prefix = unique('giveback')
      const limiter = await RateLimiter.builder(sharedRedis.url).redisPrefix(prefix).windowSizeSeconds(10).build()
      const observer = await RateLimiter.builder(sharedRedis.url).redisPrefix(prefix).windowSizeSeconds(10).build()
      try {
        const key = unique('giveback')
        const held = await warmLease(limiter, key, 100, 10)
        const admitted = hybridAbsoluteMetrics(limiter).allowed
        // While the lease holds them, the units are reserved in Redis.
        assert.ok((await observer.redis.absolute.get(key, 100)).remaining <= 1000 - admitted - held)
        if (how === 'close()') {
          await limiter.close()
        } else {
          // Wait (polling the limiter's own counters) until every unused unit has been given back.
          await waitFor(
            () => heldUnits(limiter),
            (units) => units === 0,
            { timeoutMs: 5000, intervalMs: 20, what: 'leases given back when they end' },
          )
        }
        const quota = await observer.redis.absolute.get(key, 100)
        t.diagnostic(`${how}: ${admitted} admitted, ${held} units were held; redis sees ${quota.remaining} remaining`)
        assert.equal(quota.remaining, 1000 - admitted, `after ${how}, only the ${admitted} admitted units stay counted`)
        let redisAllowed = 0
        while ((await observer.redis.absolute.inc(key, 100)).kind === 'allowed') redisAllowed += 1
        assert.equal(redisAllowed, 1000 - admitted)
      } finally {
        await limiter.close()
        await observer.close()
      }
    }
  })

  test('rl.hybrid on a limiter built without Redis throws TRYPEMA_REDIS_NOT_CONFIGURED', async () => {
    const local = await RateLimiter.builder().windowSizeSeconds(1).build()
    try {
      assert.throws(() => local.hybrid, codeError('TRYPEMA_REDIS_NOT_CONFIGURED'))
      assert.throws(() => local.hybrid.absolute.inc('k', 1), codeError('TRYPEMA_REDIS_NOT_CONFIGURED'))
      // The rest of the limiter is unaffected.
      assert.deepEqual(local.local.absolute.inc('k', 1), ALLOWED)
    } finally {
      await local.close()
    }
  })
})

describe('hybrid: keys', { skip }, () => {
  test("keys with ':', '{' and '}' are valid, and distinct strings never share a limit", async () => {
    const base = unique('ip')
    const keys = [base, `${base}:a`, `${base}:b`, `${base}:a:b`, `{${base}}`, `${base}}:a`, `${base}{`, `::ffff:127.0.0.1:${base}`]
    for (const strategy of ['absolute', 'suppressed']) {
      // Capacity floor(10 × 0.1) = 1 per key (suppressed: soft 1, hard 1): one call each.
      for (const key of keys) {
        assert.deepEqual(await rl10.hybrid[strategy].inc(key, 0.1), ALLOWED, `${strategy} ${JSON.stringify(key)}`)
      }
      for (const key of keys) {
        const second = await rl10.hybrid[strategy].inc(key, 0.1)
        assert.notEqual(second.kind, 'allowed', `${strategy}: a second call on ${JSON.stringify(key)} is over the limit`)
        if (strategy === 'suppressed') assert.equal(second.isAllowed, false)
      }
    }
    // The redis provider sees the same keys and the same counts.
    for (const key of keys) assert.equal((await rl10.redis.absolute.get(key, 0.1)).remaining, 0, JSON.stringify(key))
  })
})

describe('hybrid: argument validation', { skip }, () => {
  const long256 = 'x'.repeat(256)
  const wide256 = 'é'.repeat(128) // 256 bytes in UTF-8
  const ok255 = 'é'.repeat(127) + 'x' // 255 bytes

  test('wrong types reject with TypeError; invalid values reject with a code; nothing throws synchronously', async () => {
    const warm = unique('warm')
    // A key with a lease, so the fast path sees the invalid arguments too.
    await warmLease(rl10, warm, 1e6, 1)
    assert.deepEqual(await rl10.hybrid.suppressed.inc(warm, 1e6), ALLOWED)
    const abs = rl10.hybrid.absolute
    const sup = rl10.hybrid.suppressed

    const cases = [
      // wrong types
      ['absolute.inc(1, 1)', () => abs.inc(1, 1), typeError],
      ['absolute.inc(null, 1)', () => abs.inc(null, 1), typeError],
      ['absolute.inc(undefined, 1)', () => abs.inc(undefined, 1), typeError],
      ['absolute.inc(key, "1")', () => abs.inc(warm, '1'), typeError],
      ['absolute.inc(key, 1n)', () => abs.inc(warm, 1n), typeError],
      ['absolute.inc(key)', () => abs.inc(warm), typeError],
      ['absolute.inc(key, 1, "2")', () => abs.inc(warm, 1, '2'), typeError],
      ['absolute.inc(key, 1, null)', () => abs.inc(warm, 1, null), typeError],
      ['absolute.inc(lone surrogate, 1)', () => abs.inc('a\uD800b', 1), typeError],
      ['absolute.isAllowed(1)', () => abs.isAllowed(1), typeError],
      ['absolute.isAllowed({})', () => abs.isAllowed({}), typeError],
      ['suppressed.inc([], 1)', () => sup.inc([], 1), typeError],
      ['suppressed.inc(key, {})', () => sup.inc(warm, {}), typeError],
      ['suppressed.inc(key, 1, 1n)', () => sup.inc(warm, 1, 1n), typeError],
      ['suppressed.inc(lone surrogate, 1)', () => sup.inc('\uDC00', 1), typeError],
      ['suppressed.getSuppressionFactor(undefined)', () => sup.getSuppressionFactor(undefined), typeError],
    ]
    for (const [label, fn] of [
      ['absolute.inc', (key, rate, count) => abs.inc(key, rate, count)],
      ['suppressed.inc', (key, rate, count) => sup.inc(key, rate, count)],
    ]) {
      for (const [name, key] of [
        ["''", ''],
        ['256 ASCII bytes', long256],
        ['256 UTF-8 bytes', wide256],
        ['a 600-byte key', 'y'.repeat(600)],
      ]) {
        cases.push([`${label}(${name}, 1)`, () => fn(key, 1, 1), codeError('TRYPEMA_INVALID_REDIS_KEY')])
      }
      for (const key of [warm, unique('cold')]) {
        const where = key === warm ? 'warm key' : 'cold key'
        for (const rate of [0, -1, NaN, Infinity, -Infinity]) {
          cases.push([`${label}(${where}, ${rate})`, () => fn(key, rate, 1), codeError('TRYPEMA_INVALID_RATE_LIMIT')])
        }
        for (const count of [-1, 1.5, NaN, Infinity, 2 ** 53]) {
          cases.push([`${label}(${where}, 1e6, ${count})`, () => fn(key, 1e6, count), codeError('TRYPEMA_INVALID_COUNT')])
        }
      }
    }
    for (const [name, key] of [
      ["''", ''],
      ['256 bytes', long256],
    ]) {
      cases.push([`absolute.isAllowed(${name})`, () => abs.isAllowed(key), codeError('TRYPEMA_INVALID_REDIS_KEY')])
      cases.push([
        `suppressed.getSuppressionFactor(${name})`,
        () => sup.getSuppressionFactor(key),
        codeError('TRYPEMA_INVALID_REDIS_KEY'),
      ])
    }

    for (const [what, fn, expected] of cases) {
      await assert.rejects(within(5000, promiseOf(fn, what), what), expected, what)
    }

    // The limiter keeps working, on the warm key, on new keys and on a 255-byte key.
    assert.deepEqual(await abs.inc(warm, 1e6), ALLOWED)
    assert.deepEqual(await abs.inc(unique('after'), 1), ALLOWED)
    assert.deepEqual(await abs.inc(ok255, 1e6), ALLOWED)
    assert.deepEqual(await abs.isAllowed(ok255), ALLOWED)
    assert.deepEqual(await sup.inc(ok255, 1e6), ALLOWED)
    assert.equal(await sup.getSuppressionFactor(ok255), 0)
  })

  test('every hybrid method returns a Promise, for valid and invalid arguments alike, with the exact outcome', async () => {
    const key = unique('promise')
    const abs = rl10.hybrid.absolute
    const sup = rl10.hybrid.suppressed
    const resolves = (expected) => ({ expected })
    const quota = (value) => {
      // limit floor(10 × 1e6); remaining counts this instance's unused lease, so it is only bounded.
      assert.deepEqual(Object.keys(value).sort(), ['decision', 'degraded', 'limit', 'remaining', 'resetMs'])
      assert.deepEqual(value.decision, ALLOWED)
      assert.equal(value.degraded, false)
      assert.equal(value.limit, 1e7)
      assert.ok(Number.isInteger(value.remaining) && value.remaining >= 0 && value.remaining <= 1e7, `remaining ${value.remaining}`)
    }
    const calls = [
      ['absolute.inc cold', () => abs.inc(key, 1e6), resolves(ALLOWED)],
      ['absolute.inc warm', () => abs.inc(key, 1e6), resolves(ALLOWED)],
      ['absolute.inc count 3', () => abs.inc(key, 1e6, 3), resolves(ALLOWED)],
      ['absolute.inc count 0', () => abs.inc(unique('zero'), 1e6, 0), resolves(ALLOWED)],
      ['absolute.isAllowed', () => abs.isAllowed(key), resolves(ALLOWED)],
      ['absolute.incWithQuota', () => abs.incWithQuota(key, 1e6), { check: quota }],
      ['absolute.get (unknown key)', () => abs.get(unique('none'), 1e6), resolves({ limit: 1e7, remaining: 1e7, resetMs: 0 })],
      ['absolute.refund (unknown key)', () => abs.refund(unique('none'), 5), resolves(0)],
      ['absolute.reset', () => abs.reset(unique('none')), resolves(undefined)],
      ['suppressed.inc cold', () => sup.inc(key, 1e6), resolves(ALLOWED)],
      ['suppressed.inc warm', () => sup.inc(key, 1e6), resolves(ALLOWED)],
      ['suppressed.getSuppressionFactor', () => sup.getSuppressionFactor(key), resolves(0)],
      ['suppressed.getSuppressionFactor (unknown key)', () => sup.getSuppressionFactor(unique('none')), resolves(0)],
      ['suppressed.refund (unknown key)', () => sup.refund(unique('none'), 5), resolves(0)],
      ['suppressed.reset', () => sup.reset(unique('none')), resolves(undefined)],
      ['absolute.inc()', () => abs.inc(), { error: typeError }],
      ['absolute.isAllowed()', () => abs.isAllowed(), { error: typeError }],
      ['absolute.incWithQuota(key)', () => abs.incWithQuota(key), { error: typeError }],
      ['absolute.get(key)', () => abs.get(key), { error: typeError }],
      ['absolute.refund(key, -1)', () => abs.refund(key, -1), { error: codeError('TRYPEMA_INVALID_COUNT') }],
      ['absolute.reset("")', () => abs.reset(''), { error: codeError('TRYPEMA_INVALID_REDIS_KEY') }],
      ['suppressed.inc()', () => sup.inc(), { error: typeError }],
      ['suppressed.getSuppressionFactor()', () => sup.getSuppressionFactor(), { error: typeError }],
      ['absolute.inc(Symbol)', () => abs.inc(Symbol('k'), 1), { error: typeError }],
      ['suppressed.inc(key, 1, -1)', () => sup.inc(key, 1, -1), { error: codeError('TRYPEMA_INVALID_COUNT') }],
    ]
    for (const [what, fn, outcome] of calls) {
      const promise = within(5000, promiseOf(fn, what), what)
      if (outcome.error) await assert.rejects(promise, outcome.error, what)
      else if (outcome.check) outcome.check(await promise)
      else assert.deepEqual(await promise, outcome.expected, what)
    }
  })
})

describe('hybrid absolute: fast path', { skip: skipPrivate }, () => {
  let own
  let limiter

  before(async () => {
    privateRedis.check()
    own = await startRedis()
    // Window 1 s: leases last max(1 s / 20, 4 × 10 ms) = 50 ms, so the calls below span
    // many lease renewals.
    limiter = await RateLimiter.builder(own.url).redisPrefix(unique('fast')).windowSizeSeconds(1).build()
  })

  after(async () => {
    await limiter?.close()
    await own?.stop()
  })

  test('20,000 admitted calls on warm keys cost at most one EVALSHA per 100', async (t) => {
    const keys = Array.from({ length: 4 }, () => unique('fast'))
    // Warm-up: leases follow demand, so every key is called as busily as below for a while.
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 2000; i++) await limiter.hybrid.absolute.inc(keys[i % keys.length], 1e9)
      await sleep(15)
    }
    await redisCommand(own.port, 'CONFIG', 'RESETSTAT')

    const calls = 20_000
    let allowed = 0
    let viaEventLoop = 0
    const started = performance.now()
    for (let i = 0; i < calls; i++) {
      const p = limiter.hybrid.absolute.inc(keys[i % keys.length], 1e9)
      if (!(await settlesWithinMicrotasks(p))) viaEventLoop += 1
      if ((await p).kind === 'allowed') allowed += 1
    }
    const elapsed = performance.now() - started
    // The burst's leases end 50 ms after they were taken and give back what was not used: wait
    // until they have (the instance then holds nothing and has no more reason to call Redis),
    // so that the count includes them.
    await waitFor(() => heldUnits(limiter), (units) => units === 0, { timeoutMs: 5000, what: 'the leases of the burst given back' })
    const evalsha = await commandCalls(own.port, 'evalsha')
    t.diagnostic(`${calls} calls in ${elapsed.toFixed(1)} ms: ${evalsha} EVALSHA, ${viaEventLoop} calls not settled within microtasks`)
    assert.equal(allowed, calls, 'every call is admitted (capacity 1e9)')
    assert.ok(evalsha <= calls / 100, `${evalsha} EVALSHA for ${calls} admitted calls (limit ${calls / 100})`)
  })

  test('a call the lease covers settles within microtasks (no thread hop, no I/O), and so does a known-full rejection', async () => {
    // Window 60 s: a lease lasts 3 s, longer than this test, so what the key holds stays usable.
    const long = await RateLimiter.builder(own.url).redisPrefix(unique('micro')).windowSizeSeconds(60).build()
    try {
      const key = unique('micro')
      const held = await warmLease(long, key, 1000, 20)
      // Every unit the instance holds is served without I/O (renewals may add more meanwhile).
      for (let i = 0; i < held; i++) {
        const p = long.hybrid.absolute.inc(key, 1000)
        assert.ok(await settlesWithinMicrotasks(p), `call ${i + 1} of the ${held} the lease holds waited for I/O`)
        assert.deepEqual(await p, ALLOWED)
      }

      // A rejection decided locally (Redis just said the window is full) also settles at once.
      const full = unique('micro-full')
      assert.deepEqual(await long.hybrid.absolute.inc(full, 1 / 60), ALLOWED) // capacity floor(60 × 1/60) = 1
      assert.equal((await long.hybrid.absolute.inc(full, 1 / 60)).kind, 'rejected')
      const p = long.hybrid.absolute.inc(full, 1 / 60)
      assert.ok(await settlesWithinMicrotasks(p), 'a rejection on a known-full key waited for I/O')
      assert.equal((await p).kind, 'rejected')
    } finally {
      await long.close()
    }
  })
})

describe('hybrid absolute: quota given back', { skip }, () => {
  // Regression test (fixed in ec1f699): quota returned to the only bucket of a key while the
  // same call opened a new bucket left a stale count in the header; when that bucket left the
  // window the total went negative and the window admitted the returned amount over capacity.
  // The hybrid call takes a lease (2 units: 1 asked + 1 extra) whose unused unit is given back
  // when it ends (after 50 ms); the sleeps below are the window's own timing (1 s), not waits
  // for the limiter.
  test('after a lease gives quota back, the window still admits exactly its capacity', async (t) => {
    const limiter = await RateLimiter.builder(sharedRedis.url).redisPrefix(unique('giveback')).windowSizeSeconds(1).rateGroupSizeMs(1).build()
    try {
      const key = unique('giveback')
      const t0 = Date.now()
      assert.deepEqual(await limiter.hybrid.absolute.inc(key, 1000), ALLOWED)
      // Wait for the lease's unused unit to go back (it ends 50 ms after it was taken).
      await waitFor(() => heldUnits(limiter), (units) => units === 0, { timeoutMs: 2000, what: 'the unused unit given back' })
      assert.ok(limiter.metrics().hybridReturnedUnits >= 1, 'the lease gave quota back')
      await sleep(500 - (Date.now() - t0))
      assert.deepEqual(await limiter.redis.absolute.inc(key, 1000), ALLOWED) // keeps the key alive
      // The hybrid call's bucket (at most 50 ms + 1 s after t0) has left the window; the call at
      // 500 ms is in it.
      await sleep(1200 - (Date.now() - t0))
      assert.deepEqual(await limiter.redis.absolute.inc(key, 1000, 999), ALLOWED, '1 + 999 = capacity')
      let over = 0
      for (let i = 0; i < 30; i++) if ((await limiter.redis.absolute.inc(key, 1000)).kind === 'allowed') over += 1
      t.diagnostic(`admitted ${over} over the capacity of 1000 at ${Date.now() - t0} ms`)
      assert.equal(over, 0, `${over} calls admitted over the capacity`)
    } finally {
      await limiter.close()
    }
  })
})

describe('hybrid: get() while a sync round is in flight', { skip }, () => {
  // Regression test: get() read Redis's count while a sync round that had already reserved a
  // lease in Redis had not handed it out yet, so those units counted as used: 103 of 300 keys
  // read 5 used after 2 admitted calls (seen once in the test loop as express-rate-limit's hybrid
  // store reporting 5 hits). At a huge rate every second call takes a lease with extra units.
  for (const strategy of ['absolute', 'suppressed']) {
    test(`${strategy}: get() right after calls counts exactly the calls admitted, on 100 keys`, async () => {
      const rate = Number.MAX_SAFE_INTEGER / 10
      const counter = rl10.hybrid[strategy]
      const used = {}
      for (let i = 0; i < 100; i++) {
        const key = unique('get')
        await counter.inc(key, rate)
        await sleep(3)
        await counter.inc(key, rate)
        const quota = await counter.get(key, rate)
        used[quota.limit - quota.remaining] = (used[quota.limit - quota.remaining] ?? 0) + 1
      }
      assert.deepEqual(used, { 2: 100 }, 'keys by the units get() reports used')
    })
  }
})

describe('hybrid absolute: lease renewal in flight', { skip: skipPrivate }, () => {
  // Regression: a renewal must not empty the lease in use before its round trip to Redis, or a
  // call made meanwhile finds the lease valid but empty and is rejected (or waits) although the
  // lease still holds quota. Redis is stopped (SIGSTOP) so that the renewal stays in flight for
  // as long as the test needs: no timing involved.
  test('while a renewal waits for Redis, every unit the lease holds is served at once; the next call waits and is admitted', async () => {
    privateRedis.check()
    const own = await startRedis()
    // Window 60 s: leases last 3 s. Command timeout 10 s: the stall never times out.
    const limiter = await RateLimiter.builder({ url: own.url, commandTimeoutMs: 10_000 }).redisPrefix(unique('renew')).windowSizeSeconds(60).build()
    let stopped = false
    try {
      const key = unique('renew')
      // Capacity floor(60 × 1000) = 60000.
      await warmLease(limiter, key, 1000, 20)
      process.kill(own.pid, 'SIGSTOP')
      stopped = true
      // What the instance holds now (a grant already on its way may still add to it).
      const held = heldUnits(limiter)
      // Draining the lease asks for a renewal (once a quarter is left), which stalls. Every unit
      // held is served at once all the same, until nothing is left.
      let served = 0
      let next
      for (;;) {
        const p = limiter.hybrid.absolute.inc(key, 1000)
        if (!(await settlesWithinMicrotasks(p))) {
          next = p
          break
        }
        assert.deepEqual(await p, ALLOWED, `unit ${served + 1}`)
        served += 1
        assert.ok(served <= held + 10_000, 'calls keep being served locally with Redis stopped')
      }
      assert.ok(served >= held, `only ${served} of the ${held} units held were served while a renewal was in flight`)
      // Nothing left locally: the next call needs Redis, and waits for it.
      let settled = false
      next.then(
        () => (settled = true),
        () => (settled = true),
      )
      await sleep(50)
      assert.equal(settled, false, 'a call beyond the lease settled while Redis was stopped')
      process.kill(own.pid, 'SIGCONT')
      stopped = false
      assert.deepEqual(await within(10_000, next, 'the call waiting for the renewal'), ALLOWED, 'the window has room')
    } finally {
      if (stopped) process.kill(own.pid, 'SIGCONT')
      await limiter.close()
      await own.stop()
    }
  })
})

describe('hybrid suppressed', { skip }, () => {
  test('getSuppressionFactor is 0 for an unknown key', async () => {
    assert.equal(await rl10.hybrid.suppressed.getSuppressionFactor(unique('unknown')), 0)
    assert.equal(await rl1.hybrid.suppressed.getSuppressionFactor(unique('unknown')), 0)
  })

  test('below the rate every call is allowed; count defaults to 1', async () => {
    const key = unique('sup-low')
    // soft capacity 10 × 5 = 50
    for (let i = 0; i < 20; i++) assert.deepEqual(await rl10.hybrid.suppressed.inc(key, 5), ALLOWED)
    assert.deepEqual(await rl10.hybrid.suppressed.inc(key, 5, 10), ALLOWED)
    assert.equal(await rl10.hybrid.suppressed.getSuppressionFactor(key), 0)
  })

  test('two instances offering 3× the rate together get the rate ±25% (statistical), never more than the hard capacity', async (t) => {
    // window 2 s, rate 50/s: soft capacity 100, hard capacity 200; each instance offers 75/s.
    const prefix = unique('sup')
    const build = () => RateLimiter.builder(sharedRedis.url).redisPrefix(prefix).windowSizeSeconds(2).hardLimitFactor(2).build()
    const instances = [await build(), await build()]
    const key = unique('sup-load')
    const durationMs = 5000
    const offeredPerSecond = 75
    const admittedAt = []
    const failures = []
    let offered = 0
    const pending = []
    const t0 = Date.now()
    try {
      await Promise.all(
        instances.map(
          (instance) =>
            new Promise((resolve) => {
              let sent = 0
              const timer = setInterval(() => {
                const elapsed = Date.now() - t0
                if (elapsed >= durationMs) {
                  clearInterval(timer)
                  resolve()
                  return
                }
                const due = Math.floor((elapsed * offeredPerSecond) / 1000) + 1
                for (; sent < due; sent++) {
                  offered += 1
                  pending.push(
                    instance.hybrid.suppressed.inc(key, 50).then(
                      (d) => {
                        if (d.kind === 'allowed' || (d.kind === 'suppressed' && d.isAllowed)) admittedAt.push(Date.now() - t0)
                      },
                      (error) => failures.push(error),
                    ),
                  )
                }
              }, 5)
            }),
        ),
      )
      await within(10_000, Promise.all(pending), 'suppressed calls')
    } finally {
      for (const instance of instances) await instance.close()
    }
    assert.deepEqual(failures.map((error) => `${error.code}: ${error.message}`), [], 'no call fails')
    const perSecond = Array.from({ length: durationMs / 1000 }, (_, s) => admittedAt.filter((a) => a >= s * 1000 && a < (s + 1) * 1000).length)
    const afterFirstWindow = admittedAt.filter((a) => a >= 2000 && a < durationMs).length / ((durationMs - 2000) / 1000)
    t.diagnostic(
      `offered ${offered} (${(offered / (durationMs / 1000)).toFixed(0)}/s), admitted per second ${perSecond.join(' ')}; ` +
        `after the first window ${afterFirstWindow.toFixed(1)}/s`,
    )
    assert.ok(offered >= 0.9 * 2 * offeredPerSecond * (durationMs / 1000), `only ${offered} calls offered`)
    assert.ok(
      afterFirstWindow >= 37.5 && afterFirstWindow <= 62.5,
      `admitted ${afterFirstWindow.toFixed(1)}/s after the first window, not within ±25% of 50`,
    )
    // Admissions are reserved under the hard capacity (200) in Redis, so no 2 s window of server
    // time holds more. Times here are when the caller received the decision (up to a few ms
    // late), hence the slack of 10 on whole seconds.
    for (let s = 0; s + 2 <= perSecond.length; s++) {
      assert.ok(perSecond[s] + perSecond[s + 1] <= 200 + 10, `seconds ${s}–${s + 2} admitted ${perSecond[s] + perSecond[s + 1]}`)
    }
  })
})

describe('hybrid: Redis trouble', { skip: skipPrivate }, () => {
  test('a lease outlives Redis for at most lease_ms; calls needing Redis reject with TRYPEMA_REDIS at once; service resumes within 1 s of a restart', async (t) => {
    privateRedis.check()
    const own = await startRedis()
    // Window 20 s: leases last max(20 s / 20, 4 × 10 ms) = 1 s.
    const LEASE_MS = leaseMs(20)
    const limiter = await RateLimiter.builder(own.url).redisPrefix(unique('trouble')).windowSizeSeconds(20).build()
    try {
      const warm = unique('warm')
      const warmSuppressed = unique('warm')
      assert.deepEqual(await limiter.hybrid.suppressed.inc(warmSuppressed, 1e6), ALLOWED)
      const held = await warmLease(limiter, warm, 1e6, 30)

      const killedAt = performance.now()
      await own.stop()
      // The lease still covers calls, without Redis: a few of the units it holds (few enough
      // that no renewal is due), each decided at once.
      for (let i = 0; i < 3; i++) {
        const p = limiter.hybrid.absolute.inc(warm, 1e6)
        assert.ok(await settlesWithinMicrotasks(p), `call ${i + 1} on the warm key waited for I/O`)
        assert.deepEqual(await p, ALLOWED, `call ${i + 1} on the warm key after Redis stopped`)
      }

      // A never-seen key needs Redis: it rejects with TRYPEMA_REDIS, at once (the server refuses).
      const started = performance.now()
      await assert.rejects(
        within(5000, limiter.hybrid.absolute.inc(unique('cold'), 1e6), 'hybrid inc on a new key with Redis down'),
        codeError('TRYPEMA_REDIS'),
      )
      const tookMs = performance.now() - started
      assert.ok(tookMs < 100, `TRYPEMA_REDIS came after ${tookMs.toFixed(1)} ms`)

      // Every other kind of call that needs Redis fails the same way, at once (circuit open).
      const needRedis = [
        ['hybrid.suppressed.inc cold', () => limiter.hybrid.suppressed.inc(unique('cold'), 10)],
        ['hybrid.suppressed.getSuppressionFactor cold', () => limiter.hybrid.suppressed.getSuppressionFactor(unique('cold'))],
        ['hybrid.absolute.isAllowed cold', () => limiter.hybrid.absolute.isAllowed(unique('cold'))],
        ['hybrid.absolute.inc count beyond any lease', () => limiter.hybrid.absolute.inc(warm, 1e6, 100_000)],
        ['redis.absolute.inc', () => limiter.redis.absolute.inc(unique('cold'), 10)],
      ]
      for (const [what, fn] of needRedis) {
        const callStarted = performance.now()
        await assert.rejects(within(5000, fn(), what), (error) => {
          assert.equal(error.code, 'TRYPEMA_REDIS', `${what}: ${error.message}`)
          assert.match(error.message, /circuit open/, what)
          return true
        })
        assert.ok(performance.now() - callStarted < 50, `${what} took ${(performance.now() - callStarted).toFixed(1)} ms`)
      }

      // Once lease_ms has passed since Redis died, the unused units are no longer used: the warm
      // keys need Redis again and reject. (The wait is the bound under test.)
      await sleep(killedAt + LEASE_MS + 20 - performance.now())
      assert.ok(held - 3 >= 1, 'the warm key still held unused units')
      await assert.rejects(within(5000, limiter.hybrid.absolute.inc(warm, 1e6), 'warm key after lease_ms'), codeError('TRYPEMA_REDIS'))
      await assert.rejects(
        within(5000, limiter.hybrid.suppressed.inc(warmSuppressed, 1e6), 'warm suppressed key after lease_ms'),
        codeError('TRYPEMA_REDIS'),
      )

      // Redis comes back: calls succeed again by themselves, within 1 s.
      await own.restart()
      const restartedAt = performance.now()
      for (;;) {
        const outcome = await within(5000, limiter.hybrid.absolute.inc(unique('back'), 1e6), 'call after restart').then(
          (decision) => decision,
          (error) => error,
        )
        const since = performance.now() - restartedAt
        if (!(outcome instanceof Error)) {
          assert.deepEqual(outcome, ALLOWED)
          t.diagnostic(`calls succeeded again ${since.toFixed(0)} ms after the restart`)
          break
        }
        assert.equal(outcome.code, 'TRYPEMA_REDIS', outcome.message)
        assert.ok(since < 1000, `no success within 1 s of the restart (last error: ${outcome.message})`)
        await sleep(10)
      }
      assert.deepEqual(await within(5000, limiter.hybrid.absolute.inc(warm, 1e6), 'warm key after restart'), ALLOWED)
      assert.deepEqual(await within(5000, limiter.hybrid.suppressed.inc(warmSuppressed, 1e6), 'suppressed after restart'), ALLOWED)
    } finally {
      await within(15_000, limiter.close(), 'close()')
      await own.stop()
    }
  })
})

describe('hybrid: close() and exit', { skip }, () => {
  test('close() with hybrid calls in flight serves every one of them; later calls reject with TRYPEMA_CLOSED', async () => {
    const limiter = await RateLimiter.builder(sharedRedis.url).redisPrefix(unique('close')).windowSizeSeconds(10).build()
    const warm = unique('warm')
    await warmLease(limiter, warm, 1e6, 1)
    const calls = []
    for (let i = 0; i < 100; i++) {
      calls.push(limiter.hybrid.absolute.inc(unique('c'), 1e6)) // need Redis
      calls.push(limiter.hybrid.absolute.inc(warm, 1e6)) // local while the lease lasts
      calls.push(limiter.hybrid.suppressed.inc(unique('c'), 1e6))
    }
    calls.push(limiter.hybrid.absolute.isAllowed(unique('c')))
    calls.push(limiter.hybrid.suppressed.getSuppressionFactor(unique('c')))
    const closing = limiter.close()
    // Every call made before close() is served normally: close() waits for them.
    const results = await within(15_000, Promise.all(calls), 'calls in flight at close()')
    await within(15_000, closing, 'close()')
    assert.deepEqual(results.slice(0, 300), Array(300).fill(ALLOWED))
    assert.deepEqual(results.slice(300), [ALLOWED, 0])

    // After close(), calls reject with TRYPEMA_CLOSED (as Promises, never synchronously).
    for (const [what, fn] of [
      ['absolute.inc warm', () => limiter.hybrid.absolute.inc(warm, 1e6)],
      ['absolute.inc new', () => limiter.hybrid.absolute.inc(unique('after'), 1e6)],
      ['absolute.isAllowed', () => limiter.hybrid.absolute.isAllowed(warm)],
      ['suppressed.inc', () => limiter.hybrid.suppressed.inc(warm, 1e6)],
      ['suppressed.getSuppressionFactor', () => limiter.hybrid.suppressed.getSuppressionFactor(warm)],
    ]) {
      await assert.rejects(within(5000, promiseOf(fn, what), what), codeError('TRYPEMA_CLOSED'), what)
    }
  })

  test('a program that uses hybrid and never closes its limiter exits with code 0', async () => {
    const script = `
      import { RateLimiter } from ${INDEX_MJS}
      const rl = await RateLimiter.builder(${JSON.stringify(sharedRedis.url)})
        .redisPrefix(${JSON.stringify(unique('exit'))}).windowSizeSeconds(10).build()
      const kinds = []
      for (let i = 0; i < 200; i++) kinds.push((await rl.hybrid.absolute.inc('k:' + (i % 4), 1e6)).kind)
      kinds.push((await rl.hybrid.absolute.inc('small', 0.1)).kind, (await rl.hybrid.absolute.inc('small', 0.1)).kind)
      for (let i = 0; i < 50; i++) await rl.hybrid.suppressed.inc('s', 1e6)
      const factor = await rl.hybrid.suppressed.getSuppressionFactor('s')
      await rl.hybrid.absolute.isAllowed('k:0')
      console.log(kinds.filter((k) => k === 'allowed').length + ' ' + kinds.at(-1) + ' ' + factor)`
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
    let killed = false
    const timer = setTimeout(() => {
      killed = true
      child.kill('SIGKILL')
    }, 10_000)
    const [code, signal] = await new Promise((resolve) => child.on('close', (...args) => resolve(args)))
    clearTimeout(timer)
    assert.equal(killed, false, `the child did not exit within 10 s and was killed (stdout ${stdout.trim()})`)
    assert.equal(signal, null, `the child died of ${signal}: ${stderr}`)
    assert.equal(code, 0, `exit code ${code}: ${stderr}`)
    assert.equal(stdout.trim(), '201 rejected 0')
  })
})
