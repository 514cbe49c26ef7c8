// Issue 8, item 6: the hybrid provider uses the key's rate exactly (no rounding that loses an
// admission: rate 0.2 over 5 s is a soft capacity of exactly 1), and takes a new rate once the
// key's state has fully expired in Redis (the sticky rate goes with it), the same as `redis`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'

import { RateLimiter } from '../index.js'
import { testRedisUrl } from './redis-url.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const admitted = (d) => d.kind === 'allowed' || (d.kind === 'suppressed' && d.isAllowed)

async function limiter(window, extra = (b) => b) {
  return extra(
    RateLimiter.builder(testRedisUrl()).redisPrefix(`rates${randomBytes(6).toString('hex')}`).windowSizeSeconds(window),
  ).build()
}

test('hybrid suppressed, rate 0.2 over 5 s (soft capacity exactly 1): one admission per window, like redis', async () => {
  const rl = await limiter(5)
  try {
    for (const provider of ['redis', 'hybrid']) {
      const outcomes = []
      const started = Date.now()
      // Two windows and a bit: one call every 100 ms.
      while (Date.now() - started < 5600) {
        const d = await rl[provider].suppressed.inc(`${provider}-k`, 0.2)
        outcomes.push({ at: Date.now() - started, admitted: admitted(d) })
        await sleep(100)
      }
      const inFirst = outcomes.filter((o) => o.admitted && o.at < 4900).length
      const total = outcomes.filter((o) => o.admitted).length
      assert.equal(inFirst, 1, `${provider}: exactly one admission in the first window`)
      assert.equal(total, 2, `${provider}: and one more once the first has left the window`)
    }
  } finally {
    await rl.close()
  }
})

for (const strategy of ['absolute', 'suppressed']) {
  test(`hybrid ${strategy}: a new rate applies once the key's state has fully expired`, async () => {
    const rl = await limiter(1)
    try {
      const p = rl.hybrid[strategy]
      // Rate 5 over 1 s: capacity 5. Use it up, then let it all expire (window + a lease).
      for (let i = 0; i < 5; i++) assert.ok(admitted(await p.inc('k', 5)), `call ${i} at rate 5`)
      assert.ok(!admitted(await p.inc('k', 5)), 'the sixth call at rate 5 is refused')
      await sleep(1300)
      // Now rate 2: capacity 2, not the 5 that stuck before.
      const outcomes = []
      for (let i = 0; i < 4; i++) outcomes.push(admitted(await p.inc('k', 2)))
      assert.deepEqual(outcomes, [true, true, false, false], 'rate 2 sticks now: two admitted, then refused')
    } finally {
      await rl.close()
    }
  })
}
