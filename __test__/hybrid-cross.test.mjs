// The hybrid provider across processes and languages: Node and Rust processes hammering one
// key never get more than its capacity in any window, and Node and Rust `redis` providers
// share one limit.
//
// The Rust side is `target/debug/examples/hammer` (crates/trypema/examples/hammer.rs), the twin
// of __test__/fixtures/hybrid-hammer.mjs. If it has not been built, one
// `cargo build -p trypema --features redis-tokio --example hammer` is tried; if the binary still
// does not exist, Node processes stand in for it (and the test says so in a diagnostic).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'

import { startRedis, redisServerInstalled } from '../scripts/redis-server.mjs'

const ENV_URL = process.env.TRYPEMA_TEST_REDIS_URL
const skip = !ENV_URL && !redisServerInstalled() ? 'no TRYPEMA_TEST_REDIS_URL and redis-server is not installed' : false

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const NODE_HAMMER = fileURLToPath(new URL('./fixtures/hybrid-hammer.mjs', import.meta.url))
const RUST_HAMMER = fileURLToPath(new URL('../target/debug/examples/hammer', import.meta.url))
const BUILD_TIMEOUT_MS = 5 * 60_000
const READY_TIMEOUT_MS = 20_000

let server = null
let url

before(async () => {
  if (skip) return
  if (ENV_URL) {
    url = ENV_URL
  } else {
    server = await startRedis()
    url = server.url
  }
})

after(async () => {
  await server?.stop()
})

function unique(label) {
  return `${label}${randomBytes(6).toString('hex')}`
}

let rustHammer = null
/** The Rust hammer's path, building it once if needed; null when it cannot be had. */
function findRustHammer() {
  rustHammer ??= (async () => {
    if (existsSync(RUST_HAMMER)) return { path: RUST_HAMMER, note: null }
    const args = ['build', '-p', 'trypema', '--features', 'redis-tokio', '--example', 'hammer']
    const outcome = await new Promise((resolve) => {
      let output = ''
      let child
      try {
        child = spawn('cargo', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
      } catch (error) {
        resolve(`could not run cargo: ${error.message}`)
        return
      }
      child.stdout.setEncoding('utf8').on('data', (chunk) => (output += chunk))
      child.stderr.setEncoding('utf8').on('data', (chunk) => (output += chunk))
      const timer = setTimeout(() => child.kill('SIGKILL'), BUILD_TIMEOUT_MS)
      child.on('error', (error) => {
        clearTimeout(timer)
        resolve(`could not run cargo: ${error.message}`)
      })
      child.on('close', (code, signal) => {
        clearTimeout(timer)
        resolve(`cargo ${args.join(' ')} exited with ${signal ?? code}: ${output.trim().split('\n').slice(-3).join(' | ')}`)
      })
    })
    if (existsSync(RUST_HAMMER)) return { path: RUST_HAMMER, note: null }
    return { path: null, note: `target/debug/examples/hammer is missing (${outcome})` }
  })()
  return rustHammer
}

/**
 * Starts one hammer process. `ready` resolves when it reports "ready" on stderr; `result`
 * resolves with its exit status and parsed output once it exits (it is killed after
 * `timeoutMs`).
 */
function startHammer(kind, command, args, timeoutMs) {
  const child = spawn(command, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let readyResolve
  const ready = new Promise((resolve) => (readyResolve = resolve))
  child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk) => {
    stderr += chunk
    if (/^ready$/m.test(stderr)) readyResolve()
  })
  child.stdin.on('error', () => {})
  let killed = false
  const timer = setTimeout(() => {
    killed = true
    child.kill('SIGKILL')
  }, timeoutMs)
  const result = new Promise((resolve) => {
    child.on('error', (error) => {
      clearTimeout(timer)
      readyResolve()
      resolve({ kind, code: null, signal: null, killed, stderr: `${stderr}\n${error.message}`, output: null })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      readyResolve()
      const line = stdout.trim().split('\n').at(-1) ?? ''
      let output = null
      try {
        output = JSON.parse(line)
      } catch {}
      resolve({ kind, code, signal, killed, stderr, output, stdout })
    })
  })
  return {
    kind,
    ready,
    result,
    go() {
      child.stdin.end('go\n')
    },
    kill() {
      child.kill('SIGKILL')
    },
  }
}

/**
 * Runs the hammers given as `[kind, provider]` (kind `node` or `rust`) on one key, releases
 * them together and returns their results and the moment they were released.
 */
async function runHammers(specs, { provider, prefix, key, rate, windowSeconds, durationMs, concurrency }) {
  const cli = (p) => [url, p, prefix, key, String(rate), String(windowSeconds), String(durationMs), String(concurrency)]
  const timeoutMs = READY_TIMEOUT_MS + durationMs + 15_000
  const hammers = specs.map(({ kind, path }) =>
    kind === 'rust'
      ? startHammer('rust', path, cli(provider), timeoutMs)
      : startHammer('node', process.execPath, [NODE_HAMMER, ...cli(provider)], timeoutMs),
  )
  let readyTimer
  const readyTimeout = new Promise((resolve) => (readyTimer = setTimeout(() => resolve('timeout'), READY_TIMEOUT_MS)))
  const readiness = await Promise.race([Promise.all(hammers.map((h) => h.ready)), readyTimeout])
  clearTimeout(readyTimer)
  if (readiness === 'timeout') {
    for (const h of hammers) h.kill()
    const results = await Promise.all(hammers.map((h) => h.result))
    assert.fail(`hammers not ready within ${READY_TIMEOUT_MS} ms: ${results.map((r) => `${r.kind}: ${r.stderr}`).join('; ')}`)
  }
  const releasedAt = Date.now()
  for (const h of hammers) h.go()
  const results = await Promise.all(hammers.map((h) => h.result))
  for (const r of results) {
    assert.equal(r.killed, false, `${r.kind} hammer did not finish in time: ${r.stderr}`)
    assert.equal(r.code, 0, `${r.kind} hammer exited with ${r.signal ?? r.code}: ${r.stderr}`)
    assert.ok(r.output, `${r.kind} hammer printed no JSON line: ${r.stdout} ${r.stderr}`)
    assert.equal(r.output.errors, 0, `${r.kind} hammer had ${r.output.errors} errors: ${r.stderr}`)
    assert.equal(r.output.allowed, r.output.allowed_at_ms.length, `${r.kind}: allowed vs timestamps`)
  }
  return { results, releasedAt }
}

/** The hammers to run: `count` processes, one of them Rust when the binary can be had. */
async function pickHammers(t, count) {
  const rust = await findRustHammer()
  if (rust.path === null) {
    t.diagnostic(`${rust.note}; running ${count} Node processes instead`)
    return Array.from({ length: count }, () => ({ kind: 'node' }))
  }
  return [...Array.from({ length: count - 1 }, () => ({ kind: 'node' })), { kind: 'rust', path: rust.path }]
}

/** Most timestamps of sorted `times` in any window [t, t + length), t stepping by `step`. */
function slidingCounts(times, length, step) {
  const counts = []
  let lo = 0
  let hi = 0
  for (let start = Math.floor(times[0] - length); start <= times.at(-1); start += step) {
    while (lo < times.length && times[lo] < start) lo += 1
    while (hi < times.length && times[hi] < start + length) hi += 1
    counts.push({ start, count: hi - lo })
  }
  return counts
}

test('two Node processes and one Rust process on one hybrid key never exceed the capacity in any window', { skip }, async (t) => {
  const specs = await pickHammers(t, 3)
  const capacity = 300
  const windowMs = 1000
  const durationMs = 3000
  const { results, releasedAt } = await runHammers(specs, {
    provider: 'hybrid',
    prefix: unique('xp'),
    key: unique('hot'),
    rate: 300,
    windowSeconds: 1,
    durationMs,
    concurrency: 32,
  })

  const times = results.flatMap((r) => r.output.allowed_at_ms).sort((a, b) => a - b)
  assert.ok(times.length > 0, 'nothing was admitted')
  const sliding = slidingCounts(times, windowMs, 10)
  const busiest = sliding.reduce((a, b) => (b.count > a.count ? b : a))
  // Whole windows after the first (warm-up) one, aligned on the release: every process runs
  // from its own release (at or after `releasedAt`) for `durationMs`, so these are covered.
  const middle = []
  for (let k = 1; (k + 1) * windowMs <= durationMs; k++) {
    const from = releasedAt + k * windowMs
    middle.push({ k, count: times.filter((x) => x >= from && x < from + windowMs).length })
  }
  const per100ms = []
  for (let from = releasedAt; from < releasedAt + durationMs + 100; from += 100) {
    per100ms.push(times.filter((x) => x >= from && x < from + 100).length)
  }
  t.diagnostic(
    `hammers ${results.map((r) => `${r.kind}:${r.output.allowed}/${r.output.allowed + r.output.rejected}`).join(' ')}; ` +
      `total allowed ${times.length}`,
  )
  t.diagnostic(
    `busiest sliding ${windowMs} ms window: ${busiest.count} (starting ${Math.round(busiest.start - releasedAt)} ms from the release); ` +
      `whole windows after the first: ${middle.map((m) => `[${m.k}s,${m.k + 1}s)=${m.count}`).join(' ')}`,
  )
  t.diagnostic(`admitted per 100 ms from the release: ${per100ms.join(' ')}`)

  assert.ok(
    busiest.count <= capacity,
    `${busiest.count} admitted in the ${windowMs} ms starting ${Math.round(busiest.start - releasedAt)} ms from the release`,
  )
  for (const { k, count } of middle) {
    assert.ok(count >= 0.9 * capacity, `only ${count} admitted in [${k} s, ${k + 1} s) (capacity ${capacity})`)
  }
})

test('a Node process and a Rust process on the redis provider share one limit', { skip }, async (t) => {
  const specs = await pickHammers(t, 2)
  // capacity floor(10 s × 10) = 100, all within one window.
  const { results } = await runHammers(specs, {
    provider: 'redis',
    prefix: unique('xr'),
    key: unique('shared'),
    rate: 10,
    windowSeconds: 10,
    durationMs: 1500,
    concurrency: 16,
  })
  const total = results.reduce((sum, r) => sum + r.output.allowed, 0)
  t.diagnostic(`allowed ${results.map((r) => `${r.kind}:${r.output.allowed}/${r.output.allowed + r.output.rejected}`).join(' ')}`)
  for (const r of results) assert.ok(r.output.rejected > 0, `${r.kind} hammer was never rejected`)
  assert.equal(total, 100, `the processes were admitted ${total} in all`)
})
