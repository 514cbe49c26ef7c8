// The quota API: incWithQuota / get / refund / reset, for every provider.
// - `remaining` counts down exactly (C−1 … 0), also across processes sharing a key;
// - `resetMs` is what the window gives: oldest bucket start + W·1000 + 1 − now, measured with the
//   Redis server's TIME before and after the calls (local: performance.now()), within 1 ms;
// - get records nothing; refund gives quota back and never goes below zero;
// - reset by one process frees what another process's hybrid lease holds.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { fileURLToPath } from 'node:url'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { ALLOWED, lineChild, redisTimeMs, sharedRedis, unique } from './support.mjs'

const CHILD = fileURLToPath(new URL('./fixtures/limiter-child.mjs', import.meta.url))
const W = 10 // window, seconds

let rl
let client
let prefix

before(async () => {
  sharedRedis.check()
  if (sharedRedis.skip) return
  prefix = unique('quota')
  rl = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(W).redisPrefix(prefix).build()
  client = new Redis(sharedRedis.url, { maxRetriesPerRequest: 1 })
})

after(async () => {
  await rl?.close()
  client?.disconnect()
})

const skip = sharedRedis.skip

/** A child process with its own limiter on the same Redis and prefix. */
async function startChild() {
  const child = lineChild([CHILD, sharedRedis.url, prefix, String(W)], { timeoutMs: 30_000 })
  assert.equal(await child.next(), 'ready', child.stderr)
  return {
    async call(path, args, times) {
      child.send(JSON.stringify({ call: path, args, ...(times ? { times } : {}) }))
      const reply = JSON.parse(await child.next())
      if (reply.error) assert.fail(`child call ${path.join('.')} failed: ${reply.error.code} ${reply.error.message}`)
      return reply.ok
    },
    async close() {
      child.send(JSON.stringify({ close: true }))
      assert.deepEqual(JSON.parse(await child.next()), { ok: 'closed' })
      const { code, signal, stderr } = await child.exit
      assert.equal(code, 0, `child exited with ${code ?? signal}: ${stderr}`)
    },
    kill() {
      child.child.kill('SIGKILL')
    },
  }
}

describe('redis: remaining counts down exactly across two processes', { skip }, () => {
  test('alternating calls of two processes see C−1 … 0, in order, each once', async () => {
    const key = unique('alt')
    const rate = 3 // C = 30
    const C = W * rate
    const [a, b] = await Promise.all([startChild(), startChild()])
    try {
      const seen = []
      for (let i = 0; i < C + 2; i++) {
        const proc = i % 2 === 0 ? a : b
        const q = await proc.call(['redis', 'absolute', 'incWithQuota'], [key, rate])
        seen.push([q.decision.kind, q.remaining, q.limit])
      }
      const expected = Array.from({ length: C }, (_, i) => ['allowed', C - 1 - i, C])
      expected.push(['rejected', 0, C], ['rejected', 0, C])
      assert.deepEqual(seen, expected)
    } finally {
      await Promise.all([a.close(), b.close()])
    }
  })

  test('concurrent bursts from two processes: the remaining values of admitted calls are C−1 … 0, each once', async () => {
    const key = unique('burst')
    const rate = 4 // C = 40
    const C = W * rate
    const [a, b] = await Promise.all([startChild(), startChild()])
    try {
      const [fromA, fromB] = await Promise.all([
        a.call(['redis', 'absolute', 'incWithQuota'], [key, rate], 30),
        b.call(['redis', 'absolute', 'incWithQuota'], [key, rate], 30),
      ])
      const all = [...fromA, ...fromB]
      const allowed = all.filter((q) => q.decision.kind === 'allowed').map((q) => q.remaining)
      assert.deepEqual(allowed.sort((x, y) => y - x), Array.from({ length: C }, (_, i) => C - 1 - i))
      for (const q of all.filter((q) => q.decision.kind !== 'allowed')) {
        assert.equal(q.decision.kind, 'rejected')
        assert.equal(q.remaining, 0)
        assert.equal(q.decision.retryAfterMs, q.resetMs, 'a rejection waits exactly until the quota resets')
      }
    } finally {
      await Promise.all([a.close(), b.close()])
    }
  })
})

describe('redis: resetMs is what the window gives, in Redis server time', { skip }, () => {
  for (const strategy of ['absolute', 'suppressed']) {
    test(`${strategy}: first call W·1000 + 1; later calls within 1 ms of oldest start + W·1000 + 1 − now`, async () => {
      const key = unique('reset-ms')
      const t0 = await redisTimeMs(client)
      const first = await rl.redis[strategy].incWithQuota(key, 5)
      const t1 = await redisTimeMs(client)
      // The first call's bucket starts at the script's own "now".
      assert.equal(first.resetMs, W * 1000 + 1)
      await new Promise((resolve) => setTimeout(resolve, 150))
      for (const call of [
        () => rl.redis[strategy].incWithQuota(key, 5),
        () => rl.redis[strategy].get(key, 5),
        // Rejected / declined, fitting the capacity (50) but not what is left: the same quota, and
        // (absolute) a retry hint equal to resetMs. (A count above the capacity waits W·1000.)
        () => rl.redis[strategy].incWithQuota(key, 5, 49),
      ]) {
        const t2 = await redisTimeMs(client)
        const q = await call()
        const t3 = await redisTimeMs(client)
        // oldest start s ∈ [t0, t1], script time n ∈ [t2, t3]: resetMs = s + W·1000 + 1 − n.
        const low = t0 + W * 1000 + 1 - t3
        const high = t1 + W * 1000 + 1 - t2
        assert.ok(q.resetMs >= low - 1 && q.resetMs <= high + 1, `resetMs ${q.resetMs} not in [${low}, ${high}] ± 1`)
        assert.ok(q.resetMs < W * 1000 + 1 - 100, `resetMs ${q.resetMs}: 150 ms have passed`)
        if (q.decision?.kind === 'rejected') assert.equal(q.decision.retryAfterMs, q.resetMs)
      }
      // Without state: 0.
      assert.equal((await rl.redis[strategy].get(unique('none'), 5)).resetMs, 0)
    })
  }
})

describe('every provider: resetMs is positive and bounded once a key has state', { skip }, () => {
  for (const providerName of ['local', 'redis', 'hybrid']) {
    for (const strategy of ['absolute', 'suppressed']) {
      test(`${providerName}.${strategy}`, async () => {
        const key = unique('bounded')
        // A hybrid lease bucket may start up to a lease period (≤ W·1000/20 here) in the future.
        const bound = W * 1000 + 1 + (providerName === 'hybrid' ? (W * 1000) / 20 : 0)
        const p = rl[providerName][strategy]
        const results = [await p.incWithQuota(key, 5), await p.incWithQuota(key, 5, 3), await p.get(key, 5)]
        for (const [i, q] of results.entries()) {
          assert.ok(q.resetMs > 0 && q.resetMs <= bound, `call ${i}: resetMs ${q.resetMs} with state (bound ${bound})`)
          assert.equal(q.limit, 50)
        }
        assert.equal(results[2].remaining, 46)
      })
    }
  }
})

describe('get records nothing', { skip }, () => {
  test('redis: on an unknown key nothing is created; on a known key the stored value and TTL are untouched', async () => {
    const ghost = unique('ghost')
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await rl.redis.absolute.get(ghost, 2), { limit: 20, remaining: 20, resetMs: 0 })
      assert.deepEqual(await rl.redis.suppressed.get(ghost, 2.5), { limit: 25, remaining: 25, resetMs: 0 })
      assert.deepEqual(await rl.hybrid.absolute.get(ghost, 2), { limit: 20, remaining: 20, resetMs: 0 })
    }
    assert.equal(await client.exists(`{${prefix}:${ghost}}:a`, `{${prefix}:${ghost}}:s`), 0)

    const key = unique('known')
    await rl.redis.absolute.inc(key, 2, 3)
    const name = `{${prefix}:${key}}:a`
    const before = await client.getBuffer(name)
    const ttlBefore = await client.pttl(name)
    for (let i = 0; i < 5; i++) assert.equal((await rl.redis.absolute.get(key, 2)).remaining, 17)
    assert.deepEqual(await client.getBuffer(name), before, 'get changed the stored state')
    assert.ok((await client.pttl(name)) <= ttlBefore, 'get extended the TTL')
    // A different rate in get does not change the sticky capacity.
    assert.equal((await rl.redis.absolute.get(key, 100)).limit, 20)
    assert.equal((await rl.redis.absolute.incWithQuota(key, 2)).remaining, 16)
  })

  test('local: get neither records nor fixes a rate', () => {
    const key = unique('lget')
    for (let i = 0; i < 5; i++) assert.deepEqual(rl.local.absolute.get(key, 2), { limit: 20, remaining: 20, resetMs: 0 })
    // The first inc fixes the rate, not the gets before it.
    assert.equal(rl.local.absolute.incWithQuota(key, 1).limit, 10)
    for (let i = 0; i < 5; i++) assert.equal(rl.local.absolute.get(key, 2).remaining, 9)
    assert.equal(rl.local.suppressed.get(key, 2.5).limit, 25)
    assert.equal(rl.local.suppressed.get(key, 2.5).remaining, 25)
  })
})

describe('refund gives quota back and never goes below zero', { skip }, () => {
  for (const providerName of ['local', 'redis']) {
    test(`${providerName}: absolute`, async () => {
      const p = rl[providerName].absolute
      const key = unique('refund')
      assert.equal(await p.refund(key, 5), 0, 'nothing to refund on an unknown key')
      assert.equal((await p.incWithQuota(key, 1, 3)).remaining, 7)
      assert.equal(await p.refund(key, 2), 2)
      assert.equal((await p.get(key, 1)).remaining, 9)
      assert.equal(await p.refund(key, 5), 1, 'only what is left is refunded')
      assert.equal(await p.refund(key, 5), 0)
      assert.equal(await p.refund(key, 0), 0)
      assert.deepEqual(await p.get(key, 1), { limit: 10, remaining: 10, resetMs: 0 })
      // The whole capacity is available again, and no more.
      assert.deepEqual(await p.inc(key, 1, 10), ALLOWED)
      assert.equal((await p.inc(key, 1, 1)).kind, 'rejected')
    })

    test(`${providerName}: suppressed refunds admitted units only`, async () => {
      const p = rl[providerName].suppressed
      const key = unique('srefund')
      assert.deepEqual((await p.incWithQuota(key, 0.5, 2)).decision, ALLOWED) // soft limit 5
      const declined = await p.incWithQuota(key, 0.5, 100)
      assert.equal(declined.decision.kind, 'suppressed')
      assert.equal(declined.decision.isAllowed, false)
      assert.equal(declined.remaining, 3)
      assert.equal(await p.refund(key, 10), 2)
      assert.equal((await p.get(key, 0.5)).remaining, 5)
      assert.equal(await p.refund(key, 10), 0)
    })
  }

  for (const strategy of ['absolute', 'suppressed']) {
    test(`hybrid ${strategy}: a refund right after the admission gives it back`, async () => {
      const p = rl.hybrid[strategy]
      const key = unique('hrefund')
      const q = await p.incWithQuota(key, 1, 3)
      assert.deepEqual(q.decision, ALLOWED)
      assert.equal(await p.refund(key, 3), 3, 'the three admitted units must be refundable at once')
      assert.equal((await rl.redis[strategy].get(key, 1)).remaining, 10)
    })
  }

  test('hybrid absolute: after refunding everything, the key admits at most its capacity across instances', async () => {
    const key = unique('hover')
    const rate = 2 // C = 20
    const admitted = await rl.hybrid.absolute.inc(key, rate) // takes a lease, possibly larger than 1
    assert.deepEqual(admitted, ALLOWED)
    const refunded = await rl.hybrid.absolute.refund(key, 100)
    // Another instance (the redis provider of a second limiter) takes whatever is left...
    const other = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(W).redisPrefix(prefix).build()
    // Net admitted: the one admitted call is taken back (at most that one can be).
    let total = 1 - Math.min(refunded, 1)
    try {
      for (let i = 0; i < 25; i++) if ((await other.redis.absolute.inc(key, rate)).kind === 'allowed') total++
    } finally {
      await other.close()
    }
    // ...and this instance may not admit from a lease that Redis no longer counts.
    for (let i = 0; i < 5; i++) if ((await rl.hybrid.absolute.inc(key, rate)).kind === 'allowed') total++
    assert.ok(total <= 20, `${total} admitted (net of the ${refunded} refunded) on a key of capacity 20`)
    assert.ok(refunded <= 1, `refunded ${refunded} units, but only 1 was admitted`)
  })
})

describe("reset by one process frees another process's hybrid lease", { skip }, () => {
  test('B leases, A resets, C then sees remaining == C−1 after one inc; B giving its lease back changes nothing', async () => {
    const key = unique('lease')
    const rate = 3 // capacity 30
    const [b, c] = await Promise.all([startChild(), startChild()])
    try {
      assert.deepEqual(await b.call(['hybrid', 'absolute', 'inc'], [key, rate, 5]), ALLOWED)
      const leased = await rl.redis.absolute.get(key, rate)
      assert.ok(leased.remaining <= 25, `B's lease is recorded in Redis (remaining ${leased.remaining})`)
      await rl.redis.absolute.reset(key) // A
      assert.equal(await client.exists(`{${prefix}:${key}}:a`), 0)
      const after = await c.call(['redis', 'absolute', 'incWithQuota'], [key, rate])
      assert.deepEqual(after.decision, ALLOWED)
      assert.equal(after.remaining, 29)
      // B gives back its (old) lease on close: it must not land in the new state.
      await b.close()
      assert.equal((await rl.redis.absolute.get(key, rate)).remaining, 29)
    } finally {
      await c.close()
    }
  })

  test('reset of a suppressed key by a redis limiter frees a hybrid instance too', async () => {
    const key = unique('sreset')
    const b = await startChild()
    try {
      for (let i = 0; i < 3; i++) await b.call(['hybrid', 'suppressed', 'inc'], [key, 1, 4]) // soft 10: 4, 8, declined
      await b.call(['hybrid', 'suppressed', 'get'], [key, 1])
      await rl.redis.suppressed.reset(key)
      const q = await rl.redis.suppressed.incWithQuota(key, 1, 1)
      assert.deepEqual(q.decision, ALLOWED)
      assert.equal(q.remaining, 9)
    } finally {
      await b.close()
    }
    // B's counts from before the reset must not land in the new state when B closes.
    assert.equal((await rl.redis.suppressed.get(key, 1)).remaining, 9)
  })
})

describe('local quota (synchronous)', () => {
  let local
  before(async () => {
    local = await RateLimiter.builder().windowSizeSeconds(W).build()
  })
  after(async () => {
    await local?.close()
  })

  test('incWithQuota returns plain objects; remaining counts C−1 … 0, then rejections at 0', () => {
    const key = unique('lcount')
    const C = 25
    const seen = []
    for (let i = 0; i < C + 2; i++) {
      const q = local.local.absolute.incWithQuota(key, 2.5)
      assert.ok(!(q instanceof Promise))
      assert.deepEqual(Object.keys(q).sort(), ['decision', 'degraded', 'limit', 'remaining', 'resetMs'])
      assert.equal(q.degraded, false)
      seen.push([q.decision.kind, q.remaining])
    }
    assert.deepEqual(seen, [
      ...Array.from({ length: C }, (_, i) => ['allowed', C - 1 - i]),
      ['rejected', 0],
      ['rejected', 0],
    ])
    // count > 1 and count 0
    const other = unique('lcount')
    assert.equal(local.local.absolute.incWithQuota(other, 2.5, 10).remaining, 15)
    assert.equal(local.local.absolute.incWithQuota(other, 2.5, 0).remaining, 15)
    const tooMany = local.local.absolute.incWithQuota(other, 2.5, 26)
    assert.equal(tooMany.decision.kind, 'rejected')
    assert.equal(tooMany.decision.retryAfterMs, W * 1000, 'a count above the capacity waits a whole window')
    assert.equal(tooMany.remaining, 15)
  })

  test('resetMs: W·1000 + 1 on the first call, then oldest start + W·1000 + 1 − now (± 1 ms)', async () => {
    const key = unique('lreset')
    const t0 = performance.now()
    const first = local.local.absolute.incWithQuota(key, 1)
    const t1 = performance.now()
    assert.equal(first.resetMs, W * 1000 + 1)
    await new Promise((resolve) => setTimeout(resolve, 120))
    const t2 = performance.now()
    const later = local.local.absolute.incWithQuota(key, 1)
    const got = local.local.absolute.get(key, 1)
    const t3 = performance.now()
    for (const q of [later, got]) {
      const low = Math.floor(t0 + W * 1000 + 1 - t3)
      const high = Math.ceil(t1 + W * 1000 + 1 - t2)
      assert.ok(q.resetMs >= low - 1 && q.resetMs <= high + 1, `resetMs ${q.resetMs} not in [${low}, ${high}] ± 1`)
    }
    assert.equal(local.local.absolute.get(unique('none'), 1).resetMs, 0)
  })

  test('suppressed: the limit is the soft capacity W × rate; remaining counts admitted units', () => {
    const key = unique('lsup')
    const q = local.local.suppressed.incWithQuota(key, 0.75, 3) // soft 7.5
    assert.equal(q.limit, 7.5)
    assert.equal(q.remaining, 4, 'floor(7.5 − 3)')
    const over = local.local.suppressed.incWithQuota(key, 0.75, 5)
    assert.equal(over.decision.kind, 'suppressed')
    assert.ok(over.remaining <= 4)
  })

  test('reset forgets the key (and its sticky rate); refund never goes below zero', () => {
    const key = unique('lres')
    assert.equal(local.local.absolute.incWithQuota(key, 1, 10).remaining, 0)
    assert.equal(local.local.absolute.inc(key, 1).kind, 'rejected')
    assert.equal(local.local.absolute.reset(key), undefined)
    assert.deepEqual(local.local.absolute.get(key, 3), { limit: 30, remaining: 30, resetMs: 0 })
    assert.equal(local.local.absolute.incWithQuota(key, 3).limit, 30, 'a new rate after reset')
    assert.equal(local.local.absolute.refund(key, 1000), 1)
    assert.equal(local.local.absolute.refund(key, 1000), 0)
    assert.equal(local.local.absolute.get(key, 3).remaining, 30)
    assert.equal(local.local.suppressed.reset(unique('never')), undefined)
  })
})
