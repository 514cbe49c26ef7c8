// `npm run bench`: throughput of trypema against rate-limiter-flexible, in one run on this
// machine, reported as ratios (absolute figures drift on shared machines); decision latency
// with Redis down; then the Rust benchmarks (local vs governor, redis and hybrid on tokio and
// smol, the worst-case script call). Nothing here asserts: tests check behaviour, this prints
// figures. Related: scripts/bench-express.mjs (Express adapters) and scripts/bench-cluster.mjs
// (Redis Cluster vs one node).
import { spawnSync } from 'node:child_process'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import Redis from 'ioredis'
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible'
import { RateLimiter } from '../index.mjs'
import { redisServerInstalled, startRedis } from './redis-server.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const KEYS = Array.from({ length: 1000 }, (_, i) => `user_${i}`)
const HUGE_RATE = 1e9 // nothing is ever refused: every call does its full admission work
const quick = process.argv.includes('--quick')

const fmt = (n) => Math.round(n).toLocaleString('en-US')
const table = (rows) => {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)))
  for (const row of rows) console.log(row.map((cell, c) => String(cell).padStart(widths[c])).join('  '))
}

function syncOpsPerSecond(call, calls) {
  for (let i = 0; i < 200_000; i++) call(KEYS[i % KEYS.length])
  let best = 0
  for (let round = 0; round < 3; round++) {
    const started = performance.now()
    for (let i = 0; i < calls; i++) call(KEYS[i % KEYS.length])
    best = Math.max(best, calls / ((performance.now() - started) / 1000))
  }
  return best
}

async function promiseOpsPerSecond(call, calls, inFlight = 1000) {
  let started = performance.now()
  let next = 0
  const worker = async () => {
    while (next < calls) await call(KEYS[next++ % KEYS.length])
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  started = performance.now() - started
  return calls / (started / 1000)
}

/** 256 callers in flight, each awaiting its call before the next: ops/s and latency. */
async function loadTest(call, { seconds, hotKey }) {
  const latencies = []
  const deadline = performance.now() + seconds * 1000
  let n = 0
  const worker = async () => {
    while (performance.now() < deadline) {
      const key = hotKey ? 'hot' : KEYS[n++ % KEYS.length]
      const t0 = performance.now()
      await call(key)
      latencies.push(performance.now() - t0)
    }
  }
  const started = performance.now()
  await Promise.all(Array.from({ length: 256 }, worker))
  const elapsed = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]
  return { ops: latencies.length / elapsed, p50: pick(0.5), p99: pick(0.99) }
}

async function evalshaMicros(admin, run) {
  await admin.config('RESETSTAT')
  const result = await run()
  const stats = await admin.info('commandstats')
  const line = stats.split('\n').find((l) => l.startsWith('cmdstat_evalsha:'))
  const micros = line ? Number(/usec_per_call=([\d.]+)/.exec(line)[1]) : NaN
  return { ...result, micros }
}

console.log(`trypema benchmarks — node ${process.version}, ${new Date().toISOString()}`)

// ---- local provider vs RateLimiterMemory -------------------------------------------------
let localAbsoluteOps = 0
{
  const calls = quick ? 1_000_000 : 5_000_000
  const rl = await RateLimiter.builder().build()
  const absolute = syncOpsPerSecond((key) => rl.local.absolute.inc(key, HUGE_RATE, 1), calls)
  localAbsoluteOps = absolute
  const suppressed = syncOpsPerSecond((key) => rl.local.suppressed.inc(key, HUGE_RATE, 1), calls)
  const withQuota = syncOpsPerSecond((key) => rl.local.absolute.incWithQuota(key, HUGE_RATE, 1), calls / 5)
  await rl.close()
  const memory = new RateLimiterMemory({ points: 2 ** 31, duration: 10 })
  const flexible = await promiseOpsPerSecond((key) => memory.consume(key, 1), quick ? 300_000 : 1_000_000)
  console.log(`\nlocal provider, 1000 keys, one thread (ops/s; ratio against RateLimiterMemory.consume)`)
  table([
    ['', 'ops/s', 'ratio'],
    ['trypema rl.local.absolute.inc', fmt(absolute), (absolute / flexible).toFixed(2) + 'x'],
    ['trypema rl.local.suppressed.inc', fmt(suppressed), (suppressed / flexible).toFixed(2) + 'x'],
    ['trypema rl.local.absolute.incWithQuota', fmt(withQuota), (withQuota / flexible).toFixed(2) + 'x'],
    ['rate-limiter-flexible RateLimiterMemory.consume', fmt(flexible), '1.00x'],
  ])
}

// ---- redis provider vs RateLimiterRedis (ioredis) -----------------------------------------
let redis = null
if (process.env.TRYPEMA_BENCH_REDIS_URL === undefined && !redisServerInstalled()) {
  console.log('\nredis-server is not installed: skipping the Redis benchmarks')
} else {
  redis = process.env.TRYPEMA_BENCH_REDIS_URL ? null : await startRedis()
  const url = process.env.TRYPEMA_BENCH_REDIS_URL ?? redis.url
  const seconds = quick ? 1.5 : 4
  const admin = new Redis(url)
  const ioredis = new Redis(url, { enableAutoPipelining: false })
  const rl = await RateLimiter.builder(url).windowSizeSeconds(10).build()
  const flexible = new RateLimiterRedis({ storeClient: ioredis, points: 2 ** 31, duration: 10, keyPrefix: 'rlf' })
  const rows = [['256 in flight', 'keys', 'ops/s', 'p50 ms', 'p99 ms', 'redis µs/call', 'ops ratio']]
  for (const hotKey of [false, true]) {
    const keys = hotKey ? '1 hot' : '1000'
    const baseline = await evalshaMicros(admin, () => loadTest((key) => flexible.consume(key, 1), { seconds, hotKey }))
    const absolute = await evalshaMicros(admin, () =>
      loadTest((key) => rl.redis.absolute.inc(key, HUGE_RATE, 1), { seconds, hotKey }),
    )
    const suppressed = await evalshaMicros(admin, () =>
      loadTest((key) => rl.redis.suppressed.inc(key, HUGE_RATE, 1), { seconds, hotKey }),
    )
    const withQuota = await evalshaMicros(admin, () =>
      loadTest((key) => rl.redis.absolute.incWithQuota(key, HUGE_RATE, 1), { seconds, hotKey }),
    )
    const row = (name, r) => [name, keys, fmt(r.ops), r.p50.toFixed(2), r.p99.toFixed(2), r.micros.toFixed(2), (r.ops / baseline.ops).toFixed(2) + 'x']
    rows.push(row('trypema rl.redis.absolute.inc', absolute))
    rows.push(row('trypema rl.redis.suppressed.inc', suppressed))
    rows.push(row('trypema rl.redis.absolute.incWithQuota', withQuota))
    rows.push(row('rate-limiter-flexible RateLimiterRedis.consume', baseline))
  }
  console.log(`\nredis provider against one local redis-server (${seconds} s per row; ratio against rate-limiter-flexible)`)
  table(rows)

  // Hybrid: each call awaited, as a request handler would; leases warmed up first.
  const hybridRows = [['1000 keys, each call awaited', 'ops/s', 'vs local absolute', 'EVALSHA per admitted']]
  for (const strategy of ['absolute', 'suppressed']) {
    const limiter = rl.hybrid[strategy]
    const deadline = performance.now() + 1500
    for (let i = 0; performance.now() < deadline; ) for (let j = 0; j < 1000; j++) await limiter.inc(KEYS[i++ % 1000], HUGE_RATE)
    await admin.config('RESETSTAT')
    const calls = quick ? 1_000_000 : 3_000_000
    let admitted = 0
    const started = performance.now()
    for (let i = 0; i < calls; i++) {
      const d = await limiter.inc(KEYS[i % 1000], HUGE_RATE)
      if (d.kind === 'allowed' || d.isAllowed) admitted++
    }
    const ops = calls / ((performance.now() - started) / 1000)
    const stats = await admin.info('commandstats')
    const count = (name) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
    // TIME is read inside the scripts; what the client sends is EVALSHA (EVAL after a flush).
    const redisCalls = count('evalsha') + count('eval')
    hybridRows.push([`trypema rl.hybrid.${strategy}.inc`, fmt(ops), (ops / localAbsoluteOps).toFixed(2) + 'x', (redisCalls / admitted).toFixed(5)])
  }
  console.log('\nhybrid provider, Node (ratio against rl.local.absolute.inc above)')
  table(hybridRows)
  await rl.close()
  admin.disconnect()
  ioredis.disconnect()

  // Decisions while Redis is down: the circuit breaker answers at once after the first failure.
  const own = await startRedis()
  const outageRows = [['redis-server killed', 'calls', 'p50 ms', 'p99 ms', 'max ms']]
  for (const policy of ['reject', 'local']) {
    const limiter = await RateLimiter.builder(own.url).onRedisError(policy).build()
    await limiter.redis.absolute.inc('warm', HUGE_RATE)
    await own.stop()
    await limiter.redis.absolute.inc('first', HUGE_RATE).catch(() => {}) // the failure that opens the breaker
    const latencies = []
    for (let i = 0; i < 5000; i++) {
      const t0 = performance.now()
      await limiter.redis.absolute.inc(KEYS[i % 1000], HUGE_RATE).catch(() => {})
      latencies.push(performance.now() - t0)
    }
    latencies.sort((a, b) => a - b)
    const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(3)
    outageRows.push([`onRedisError '${policy}'`, latencies.length, at(0.5), at(0.99), latencies.at(-1).toFixed(3)])
    await limiter.close()
    await own.restart()
  }
  await own.stop()
  console.log('\ndecision latency with Redis down (rl.redis.absolute.inc, after the first failure)')
  table(outageRows)
}

// ---- Rust -----------------------------------------------------------------------------------
function cargoBench(args, env = {}) {
  console.log(`\n$ cargo bench ${args.join(' ')}`)
  const result = spawnSync('cargo', ['bench', '-q', ...args], { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })
  if (result.status !== 0) process.exitCode = 1
}
if (!process.argv.includes('--no-rust')) {
  cargoBench(['-p', 'trypema', '--bench', 'local_vs_governor'])
  if (redis !== null) {
    for (const runtime of ['redis-tokio', 'redis-smol']) {
      cargoBench(['-p', 'trypema', '--features', runtime, '--bench', 'redis_throughput'], {
        TRYPEMA_BENCH_REDIS_URL: redis.url,
      })
    }
    console.log('\n$ cargo run --release -p trypema --features redis-tokio --example worst_case')
    spawnSync('cargo', ['run', '-q', '--release', '-p', 'trypema', '--features', 'redis-tokio', '--example', 'worst_case', '--', redis.url], {
      cwd: root,
      stdio: 'inherit',
    })
  }
}
if (redis !== null) await redis.stop()
