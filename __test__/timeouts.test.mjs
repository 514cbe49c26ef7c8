// Time bounds against a Redis that stops answering (issue 15 "silent server"; issue 9 item 8):
// - build() against a listener that accepts and never answers rejects with TRYPEMA_REDIS after
//   connectTimeoutMs (default 2000 ms), within connectTimeoutMs + SLACK_MS;
// - every redis and hybrid call against a silenced connection (a proxy that stops forwarding), a
//   SIGSTOPped redis-server or a CLIENT PAUSEd one rejects with TRYPEMA_REDIS_TIMEOUT after
//   commandTimeoutMs (default 2000 ms; also 300 ms), within commandTimeoutMs + SLACK_MS, and
//   every Promise settles; once one call has timed out the circuit breaker fails the next ones
//   at once with TRYPEMA_REDIS; calls succeed again within 1 s of Redis answering;
// - hybrid calls made at different moments of a stall each settle within the bound counted
//   from their own start (not after a round they did not start plus one of their own);
// - close() during a stall is bounded by the command timeout too.
//
// Each bound is checked from both sides: the call has NOT settled EARLY_MS before the timeout
// (so it was the timeout, not some other failure, that ended it) and HAS settled SLACK_MS after
// it. Removing the timeout makes these tests fail (the `within` guard fires); so does a server
// that answers.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { startRedis } from '../scripts/redis-server.mjs'
import { startSilencingProxy, startSilentServer } from './silent-server.mjs'
import { ALLOWED, privateRedis, unique, within } from './support.mjs'

/** The documented defaults (README, index.d.ts). */
const DEFAULT_CONNECT_TIMEOUT_MS = 2000
const DEFAULT_COMMAND_TIMEOUT_MS = 2000
/**
 * What a call may take beyond its timeout: build() adds a 100 ms grace of its own to the connect
 * timeout; the rest is thread hops and scheduling on a busy 2-core machine.
 */
const SLACK_MS = 250
/** A timed-out call must still be pending this long before its timeout. */
const EARLY_MS = 100
/** Once the circuit breaker is open, a call must settle within this (outage.test.mjs bounds the p99 under load at 20 ms). */
const FAST_MS = 50
/** Calls succeed again within this of Redis answering again (issue 13). */
const RECOVERY_MS = 1000
/** CLIENT PAUSE length: the 300 ms timeout and the fail-fast checks fit in it with room to spare. */
const PAUSE_MS = 2000

before(() => privateRedis.check())

/** Follows `promise`, recording when (ms after `t0`) and how it settled. */
function track(name, promise, t0 = performance.now()) {
  const entry = { name, t0, settled: false, at: null, value: undefined, error: undefined }
  entry.done = promise.then(
    (value) => Object.assign(entry, { settled: true, at: performance.now() - t0, value }),
    (error) => Object.assign(entry, { settled: true, at: performance.now() - t0, error }),
  )
  return entry
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Asserts that every tracked call rejects with `code` after `timeoutMs`: none has settled at
 * `timeoutMs - EARLY_MS`, all have within `timeoutMs + SLACK_MS` (each from its own start).
 */
async function assertTimedOut(entries, timeoutMs, code = 'TRYPEMA_REDIS_TIMEOUT') {
  const started = Math.min(...entries.map((e) => e.t0))
  await sleep(Math.max(0, timeoutMs - EARLY_MS - (performance.now() - started)))
  const early = entries.filter((e) => e.settled)
  assert.deepEqual(
    early.map((e) => `${e.name}: ${e.error?.code ?? JSON.stringify(e.value)} after ${e.at.toFixed(1)} ms`),
    [],
    `calls settled more than ${EARLY_MS} ms before the ${timeoutMs} ms timeout: is the server really silent?`,
  )
  await within(timeoutMs + SLACK_MS + 5000, Promise.all(entries.map((e) => e.done)), 'calls to a silent server')
  for (const e of entries) assertTimeoutError(e, timeoutMs, code)
  return Math.max(...entries.map((e) => e.at))
}

/**
 * `e` (settled) rejected with `code` after its timeout: at most `timeoutMs + SLACK_MS` after it
 * started, and (so it was the timeout that ended it) no earlier than `timeoutMs - EARLY_MS`.
 */
function assertTimeoutError(e, timeoutMs, code = 'TRYPEMA_REDIS_TIMEOUT') {
  assert.ok(e.error, `${e.name} resolved ${JSON.stringify(e.value)} from a silent server`)
  assert.equal(e.error.constructor, Error, `${e.name}: ${e.error}`)
  if (e.name.startsWith('hybrid') && e.error.code === 'TRYPEMA_REDIS') {
    // A hybrid call that needs Redis waits for a sync round (bounded by its own deadline). When
    // a round already in flight (a lease renewal, a push, another key's round) times out first,
    // the circuit breaker it opens fails the call's own round at once: TRYPEMA_REDIS, "circuit
    // open", at that timeout - so still no earlier than timeoutMs - EARLY_MS after the stall.
    assert.match(e.error.message, /circuit open after: .*(did not answer|timed out)/, e.name)
  } else {
    assert.equal(e.error.code, code, `${e.name}: ${e.error.message}`)
  }
  assert.ok(
    e.at >= timeoutMs - EARLY_MS && e.at <= timeoutMs + SLACK_MS,
    `${e.name} settled after ${e.at.toFixed(1)} ms, not within [${timeoutMs} - ${EARLY_MS}, ${timeoutMs} + ${SLACK_MS}] ms`,
  )
}

/** Asserts that every tracked call rejects with TRYPEMA_REDIS within FAST_MS (open circuit breaker). */
async function assertFailFast(entries) {
  await within(FAST_MS + 5000, Promise.all(entries.map((e) => e.done)), 'calls with the circuit open')
  for (const e of entries) {
    assert.ok(e.error, `${e.name} resolved ${JSON.stringify(e.value)} with Redis silent`)
    assert.equal(e.error.code, 'TRYPEMA_REDIS', `${e.name}: ${e.error.message}`)
    assert.match(e.error.message, /circuit open/, e.name)
    assert.ok(e.at < FAST_MS, `${e.name} took ${e.at.toFixed(1)} ms with the circuit open`)
  }
  return Math.max(...entries.map((e) => e.at))
}

/** Polls a fresh-key redis call every 10 ms until it is allowed; returns the ms it took. */
async function recovery(limiter, since = performance.now()) {
  for (;;) {
    const outcome = await limiter.redis.absolute.inc(unique('back'), 5).then(
      (value) => value,
      (error) => error,
    )
    const elapsed = performance.now() - since
    if (!(outcome instanceof Error)) {
      assert.deepEqual(outcome, ALLOWED)
      return elapsed
    }
    assert.ok(elapsed < RECOVERY_MS, `no call succeeded within ${RECOVERY_MS} ms of Redis answering again (last: ${outcome.code} ${outcome.message})`)
    await sleep(10)
  }
}

/**
 * Every Redis-backed method, on keys that need Redis: cold keys, and (hybrid) a count larger
 * than the warm key's lease holds.
 */
function everyRemoteCall(limiter, warm) {
  const calls = []
  for (const provider of ['redis', 'hybrid']) {
    const absolute = limiter[provider].absolute
    const suppressed = limiter[provider].suppressed
    calls.push(
      [`${provider}.absolute.inc`, () => absolute.inc(unique('c'), 5)],
      [`${provider}.absolute.incWithQuota`, () => absolute.incWithQuota(unique('c'), 5, 2)],
      [`${provider}.absolute.isAllowed`, () => absolute.isAllowed(unique('c'))],
      [`${provider}.absolute.get`, () => absolute.get(unique('c'), 5)],
      [`${provider}.absolute.refund`, () => absolute.refund(unique('c'), 1)],
      [`${provider}.absolute.reset`, () => absolute.reset(unique('c'))],
      [`${provider}.suppressed.inc`, () => suppressed.inc(unique('c'), 5)],
      [`${provider}.suppressed.incWithQuota`, () => suppressed.incWithQuota(unique('c'), 5)],
      [`${provider}.suppressed.getSuppressionFactor`, () => suppressed.getSuppressionFactor(unique('c'))],
      [`${provider}.suppressed.get`, () => suppressed.get(unique('c'), 5)],
      [`${provider}.suppressed.refund`, () => suppressed.refund(unique('c'), 1)],
      [`${provider}.suppressed.reset`, () => suppressed.reset(unique('c'))],
    )
  }
  // More than the warm key's lease can hold (at most capacity / 16 + what callers wait for).
  calls.push(['hybrid.absolute.inc(warm key, count beyond its lease)', () => limiter.hybrid.absolute.inc(warm, 1e6, 1e6)])
  return calls
}

function trackAll(calls) {
  const t0 = performance.now()
  return calls.map(([name, fn]) => track(name, fn(), t0))
}

async function warmUp(limiter) {
  const warm = unique('warm')
  // A burst, so the key holds a lease sized for it (leases follow demand).
  const burst = await Promise.all(Array.from({ length: 50 }, () => limiter.hybrid.absolute.inc(warm, 1e6)))
  assert.deepEqual(burst, Array(50).fill(ALLOWED))
  assert.deepEqual(await limiter.redis.absolute.inc(unique('warm'), 5), ALLOWED)
  return warm
}

/**
 * The whole sequence against one kind of silence: every call times out at `timeoutMs`, then
 * fails fast, then the limiter recovers once `resume()` lets Redis answer again.
 */
async function silenceScenario(t, { url, timeoutMs, silence, resume }) {
  const builder = timeoutMs === undefined ? RateLimiter.builder(url) : RateLimiter.builder({ url, commandTimeoutMs: timeoutMs })
  const limiter = await builder.windowSizeSeconds(10).build()
  const bound = timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS
  let resumed = false
  try {
    const warm = await warmUp(limiter)
    await silence()
    const slowest = await assertTimedOut(trackAll(everyRemoteCall(limiter, warm)), bound)
    assert.equal(limiter.metrics().redisDegraded, true, 'the circuit breaker is open after a timeout')
    const fastest = await assertFailFast(trackAll(everyRemoteCall(limiter, warm)))
    await resume()
    resumed = true
    const recoveredIn = await recovery(limiter, performance.now())
    assert.deepEqual(await limiter.hybrid.absolute.inc(unique('back'), 5), ALLOWED)
    assert.deepEqual(await limiter.hybrid.suppressed.inc(unique('back'), 5), ALLOWED)
    t.diagnostic(
      `timeout ${bound} ms: slowest timed-out call ${slowest.toFixed(1)} ms; slowest call with the circuit open ` +
        `${fastest.toFixed(2)} ms; calls succeeded again ${recoveredIn.toFixed(0)} ms after Redis answered`,
    )
  } finally {
    if (!resumed) await resume()
    await within(bound + SLACK_MS + 5000, limiter.close(), 'close()')
  }
}

describe('build() against a server that accepts and never answers', { skip: privateRedis.skip }, () => {
  for (const connectTimeoutMs of [undefined, 300]) {
    const bound = connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    const label = connectTimeoutMs === undefined ? `the default connectTimeoutMs (${bound} ms)` : `connectTimeoutMs ${bound}`
    test(`rejects with TRYPEMA_REDIS after ${label}, within ${bound} + ${SLACK_MS} ms, and closes its connection`, async (t) => {
      const silent = await startSilentServer()
      try {
        const options = { url: silent.url, commandTimeoutMs: 60_000 } // must not matter: the connect timeout bounds build()
        if (connectTimeoutMs !== undefined) options.connectTimeoutMs = connectTimeoutMs
        const building = track('build()', RateLimiter.builder(options).build())
        const took = await assertTimedOut([building], bound, 'TRYPEMA_REDIS')
        assert.ok(silent.connections >= 1, 'build() did connect to the silent server')
        t.diagnostic(`build() rejected after ${took.toFixed(1)} ms: ${building.error.message}`)
        // The failed build closed what it opened.
        const deadline = performance.now() + 2000
        while (silent.open > 0 && performance.now() < deadline) await sleep(10)
        assert.equal(silent.open, 0, 'connections left open by a failed build()')
      } finally {
        await silent.close()
      }
    })
  }
})

describe('every call against a silent connection settles within commandTimeoutMs', { skip: privateRedis.skip }, () => {
  let server
  before(async () => {
    server = await startRedis()
  })
  after(async () => {
    await server?.stop()
  })

  for (const timeoutMs of [undefined, 300]) {
    const bound = timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS
    const label = timeoutMs === undefined ? `the default commandTimeoutMs (${bound} ms)` : `commandTimeoutMs ${bound}`
    test(`a connection that stops answering: TRYPEMA_REDIS_TIMEOUT after ${label}, then fail-fast, then recovery`, async (t) => {
      const proxy = await startSilencingProxy(server.port)
      try {
        await silenceScenario(t, {
          url: proxy.url,
          timeoutMs,
          silence: () => proxy.silence(),
          resume: () => proxy.restore(),
        })
      } finally {
        await proxy.close()
      }
    })
  }

  test(`close() with hybrid leases to give back, on a silent connection, settles within commandTimeoutMs + ${SLACK_MS} ms`, async () => {
    const proxy = await startSilencingProxy(server.port)
    const limiter = await RateLimiter.builder({ url: proxy.url, commandTimeoutMs: 300 }).build()
    try {
      await warmUp(limiter)
      assert.deepEqual(await limiter.hybrid.suppressed.inc(unique('warm'), 5), ALLOWED)
      proxy.silence()
      // close() gives the leases back: that round trip is what waits for the timeout.
      const closing = track('close()', limiter.close())
      await sleep(300 - EARLY_MS)
      assert.equal(closing.settled, false, `close() settled after ${closing.at?.toFixed(1)} ms, before it could have given anything back`)
      await within(300 + SLACK_MS + 5000, closing.done, 'close() on a silent connection')
      assert.equal(closing.error, undefined, `close() rejected: ${closing.error?.message}`)
      assert.ok(closing.at <= 300 + SLACK_MS, `close() took ${closing.at.toFixed(1)} ms`)
      await assert.rejects(limiter.hybrid.absolute.inc('k', 5), { code: 'TRYPEMA_CLOSED' })
    } finally {
      proxy.restore()
      await proxy.close()
    }
  })
})

describe('every call against a paused redis-server settles within commandTimeoutMs', { skip: privateRedis.skip }, () => {
  for (const timeoutMs of [undefined, 300]) {
    const bound = timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS
    const label = timeoutMs === undefined ? `the default commandTimeoutMs (${bound} ms)` : `commandTimeoutMs ${bound}`
    test(`SIGSTOP: TRYPEMA_REDIS_TIMEOUT after ${label}, then fail-fast; SIGCONT: recovery`, async (t) => {
      const server = await startRedis()
      try {
        await silenceScenario(t, {
          url: server.url,
          timeoutMs,
          silence: () => process.kill(server.pid, 'SIGSTOP'),
          resume: () => process.kill(server.pid, 'SIGCONT'),
        })
      } finally {
        await server.stop()
      }
    })
  }

  test('CLIENT PAUSE ALL for 2 s, longer than commandTimeoutMs (300 ms): TRYPEMA_REDIS_TIMEOUT, fail-fast; recovery when the pause ends', async (t) => {
    const server = await startRedis()
    // CLIENT UNPAUSE cannot get through a PAUSE ALL (it is paused too): the pause ends by itself,
    // and the admin connection's next command is answered exactly then.
    const admin = new Redis(server.url, { maxRetriesPerRequest: 0 })
    try {
      await admin.ping()
      await silenceScenario(t, {
        url: server.url,
        timeoutMs: 300,
        silence: () => admin.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'ALL'),
        resume: () => admin.ping(),
      })
    } finally {
      admin.disconnect()
      await server.stop()
    }
  })
})

describe('hybrid calls during a stall each settle within commandTimeoutMs of their own start (issue 9 item 8)', { skip: privateRedis.skip }, () => {
  test('SIGSTOP with the default 2000 ms: calls made before and during a stalled sync round are all bounded', async (t) => {
    const server = await startRedis()
    const limiter = await RateLimiter.builder(server.url).windowSizeSeconds(10).build()
    const bound = DEFAULT_COMMAND_TIMEOUT_MS
    try {
      const warm = await warmUp(limiter)
      const warmSuppressed = unique('warm')
      assert.deepEqual(await limiter.hybrid.suppressed.inc(warmSuppressed, 5), ALLOWED)
      process.kill(server.pid, 'SIGSTOP')
      const t0 = performance.now()
      // First wave: starts sync rounds that stall.
      const first = [
        track('hybrid.absolute.inc cold (1st wave)', limiter.hybrid.absolute.inc(unique('c'), 5)),
        track('hybrid.suppressed.inc cold (1st wave)', limiter.hybrid.suppressed.inc(unique('c'), 5)),
        track('hybrid.absolute.inc beyond the lease (1st wave)', limiter.hybrid.absolute.inc(warm, 1e6, 1e6)),
      ]
      // Second wave, halfway through the stall: must wait for a round after the stalled one,
      // yet settle within its own bound (it used to take up to two timeouts: 4 s).
      await sleep(bound / 2)
      const second = [
        track('absolute.inc cold (2nd wave)', limiter.hybrid.absolute.inc(unique('c'), 5)),
        track('suppressed.inc cold (2nd wave)', limiter.hybrid.suppressed.inc(unique('c'), 5)),
        track('absolute.inc beyond the lease (2nd wave)', limiter.hybrid.absolute.inc(warm, 1e6, 1e6)),
        track('suppressed.inc count 1000 (2nd wave)', limiter.hybrid.suppressed.inc(warmSuppressed, 5, 1000)),
      ]
      await within(bound + SLACK_MS + 5000, Promise.all([...first, ...second].map((e) => e.done)), 'hybrid calls during the stall')
      for (const e of first) assertTimeoutError(e, bound)
      for (const e of second) {
        // Their own round runs once the stalled one has timed out and opened the circuit
        // (TRYPEMA_REDIS: nothing sent). A call on a key that the stalled round carried anyway
        // (the warm suppressed key pushing its counts) settles with that round instead, as
        // TRYPEMA_REDIS_TIMEOUT ("may have been counted", which stays true of a call that was
        // not): either way a failure, within its own bound.
        assert.ok(
          ['TRYPEMA_REDIS', 'TRYPEMA_REDIS_TIMEOUT'].includes(e.error?.code),
          `${e.name}: ${e.error?.code} ${e.error?.message ?? JSON.stringify(e.value)}`,
        )
        assert.ok(e.at <= bound + SLACK_MS, `${e.name} settled ${e.at.toFixed(1)} ms after it started`)
        assert.ok(e.t0 - t0 + e.at <= bound + SLACK_MS, `${e.name} settled ${(e.t0 - t0 + e.at).toFixed(1)} ms into the stall`)
      }
      t.diagnostic(
        `1st wave settled after ${first.map((e) => e.at.toFixed(0)).join('/')} ms; 2nd wave (started at ` +
          `${(second[0].t0 - t0).toFixed(0)} ms) after ${second.map((e) => e.at.toFixed(0)).join('/')} ms of their own`,
      )
    } finally {
      process.kill(server.pid, 'SIGCONT')
      await within(bound + SLACK_MS + 5000, limiter.close(), 'close()')
      await server.stop()
    }
  })
})
