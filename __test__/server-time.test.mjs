// Issue 8: the Redis server's clock decides, whatever the clients' clocks say. Limiter B makes its
// first call while a 1.5 s Lua busy loop blocks Redis (under the old design its clock anchor then
// came out that far off, and two limiters admitted 2 × C in one window). Both limiters then call
// for three windows; every admission is bracketed by Redis TIME read before and after it, and no
// span of W − G ms of server time may hold more than C admissions whose brackets lie inside it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import net from 'node:net'

import { RateLimiter } from '../index.js'
import { testRedisUrl } from './redis-url.mjs'

const W = 2
const G = 10
const RATE = 25 // capacity 50

/** A raw connection that answers TIME (ms, server clock) and runs a busy script. */
function rawClient(url) {
  const { hostname, port } = new URL(url)
  const socket = net.connect({ host: hostname, port: Number(port) })
  let buffer = ''
  const waiting = []
  socket.setEncoding('utf8')
  socket.on('data', (chunk) => {
    buffer += chunk
    for (;;) {
      const reply = parseReply(buffer)
      if (reply === null) break
      buffer = buffer.slice(reply.length)
      waiting.shift()(reply.value)
    }
  })
  const send = (args) =>
    new Promise((resolve) => {
      waiting.push(resolve)
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`)
    })
  return {
    connected: new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject)),
    async time() {
      const [seconds, micros] = await send(['TIME'])
      return Number(seconds) * 1000 + Number(micros) / 1000
    },
    send,
    close: () => socket.destroy(),
  }
}

/** One RESP2 reply at the start of `text` (TIME's array, integers, statuses): { value, length }. */
function parseReply(text) {
  const end = text.indexOf('\r\n')
  if (end < 0) return null
  const head = text[0]
  if (head === ':' || head === '+' || head === '-') return { value: text.slice(1, end), length: end + 2 }
  if (head === '*') {
    const count = Number(text.slice(1, end))
    const values = []
    let at = end + 2
    for (let i = 0; i < count; i++) {
      const lineEnd = text.indexOf('\r\n', at)
      if (lineEnd < 0) return null
      const size = Number(text.slice(at + 1, lineEnd))
      if (text.length < lineEnd + 2 + size + 2) return null
      values.push(text.slice(lineEnd + 2, lineEnd + 2 + size))
      at = lineEnd + 2 + size + 2
    }
    return { value: values, length: at }
  }
  return null
}

const BUSY_SCRIPT =
  "local t = redis.call('TIME') local start = t[1] * 1000 + t[2] / 1000 " +
  "while true do t = redis.call('TIME') if t[1] * 1000 + t[2] / 1000 - start > tonumber(ARGV[1]) then break end end return 1"

/** Calls `inc` until `until`, bracketing each admission with server time. */
async function hammer(inc, clock, until) {
  const admitted = []
  while (Date.now() < until) {
    const before = await clock.time()
    const decision = await inc()
    const after = await clock.time()
    if (decision.kind === 'allowed') admitted.push([before, after])
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  return admitted
}

/** The most admissions whose whole bracket fits inside some span of `span` ms. */
function certainBusiest(admissions, span) {
  let best = 0
  for (const [start] of admissions) {
    best = Math.max(best, admissions.filter(([before, after]) => before >= start && after < start + span).length)
  }
  return best
}

for (const provider of ['redis', 'hybrid']) {
  test(`${provider}: a first call made behind a 1.5 s busy script does not widen the window`, async (t) => {
    const url = testRedisUrl()
    const prefix = `skew${randomBytes(6).toString('hex')}`
    const build = () =>
      RateLimiter.builder({ url, commandTimeoutMs: 3000 }).redisPrefix(prefix).windowSizeSeconds(W).rateGroupSizeMs(G).build()
    const [a, b] = await Promise.all([build(), build()])
    const [clockA, clockB, busy] = [rawClient(url), rawClient(url), rawClient(url)]
    await Promise.all([clockA.connected, clockB.connected, busy.connected])
    try {
      assert.deepEqual(await a[provider].absolute.inc('k', RATE), { kind: 'allowed' })
      const blocking = busy.send(['EVAL', BUSY_SCRIPT, 0, 1500])
      await new Promise((resolve) => setTimeout(resolve, 100))
      const asked = Date.now()
      const first = await b[provider].absolute.inc('k', RATE)
      assert.equal(first.kind, 'allowed')
      assert.ok(Date.now() - asked >= 1000, "B's first call waited behind the busy script")
      await blocking
      const until = Date.now() + 3 * W * 1000
      const [fromA, fromB] = await Promise.all([
        hammer(() => a[provider].absolute.inc('k', RATE), clockA, until),
        hammer(() => b[provider].absolute.inc('k', RATE), clockB, until),
      ])
      const all = [...fromA, ...fromB].sort((x, y) => x[0] - y[0])
      // A call joins a bucket up to G ms old, so the promise is "at most C in any W − G".
      const span = W * 1000 - G
      const worst = certainBusiest(all, span)
      t.diagnostic(`A admitted ${fromA.length}, B ${fromB.length}; busiest ${span} ms of server time: ${worst}`)
      assert.ok(worst <= 50, `${worst} admissions within ${span} ms of server time (capacity 50)`)
      assert.ok(all.length >= 100, `the windows were used: ${all.length} admitted over three windows`)
    } finally {
      for (const client of [clockA, clockB, busy]) client.close()
      await Promise.all([a.close(), b.close()])
    }
  })
}
