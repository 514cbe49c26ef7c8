// The hybrid provider across processes and languages: Node and Rust processes hammering one
// key never get more than its capacity (at small capacities, 1, 5 and 50, exactly the capacity;
// at a large one, never more in any sliding window), and Node and Rust `redis` providers share
// one limit.
//
// The Rust side is `target/debug/examples/hammer` (crates/trypema/examples/hammer.rs), the twin
// of __test__/fixtures/hybrid-hammer.mjs. Before the first test the file runs
// `cargo build -p trypema --features redis-tokio --example hammer`: a no-op when the binary is up
// to date, a rebuild when the crate changed since (a stale binary would test old code, and an
// example built with other features - `npm test` also builds it for redis-smol - is not the one
// meant here). If it cannot be built the tests FAIL, saying why; they never fall back to Node
// processes. TRYPEMA_TEST_SKIP_RUST=1 skips the tests that need Rust, with a printed reason.
//
// Admission times are the wall-clock times at which each process received `allowed`; the
// processes and redis-server run on one machine, so this is the server's clock plus the reply's
// latency (a few ms), which the sliding-window check below tolerates by design of the hybrid
// provider (a lease's reservation outlives its last admission by a full window).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { busiest } from './instances.mjs'
import { sharedRedis, unique } from './support.mjs'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const NODE_HAMMER = fileURLToPath(new URL('./fixtures/hybrid-hammer.mjs', import.meta.url))
const RUST_HAMMER = fileURLToPath(new URL('../target/debug/examples/hammer', import.meta.url))
const CARGO_ARGS = ['build', '-p', 'trypema', '--features', 'redis-tokio', '--example', 'hammer']
const BUILD_TIMEOUT_MS = 10 * 60_000
const READY_TIMEOUT_MS = 20_000

const SKIP_RUST = process.env.TRYPEMA_TEST_SKIP_RUST === '1'
const skipRust = SKIP_RUST
  ? 'TRYPEMA_TEST_SKIP_RUST=1: the Rust hammer is not built and the tests that need it are skipped'
  : false
if (SKIP_RUST) console.log(`# skipping: ${skipRust}`)
const skip = sharedRedis.skip
const skipWithRust = skip || skipRust

let url
before(() => {
  sharedRedis.check()
  url = sharedRedis.url
})

let rustHammer = null
/** Builds the Rust hammer (cargo decides whether anything changed) once; fails with the reason. */
function buildRustHammer() {
  rustHammer ??= new Promise((resolve) => {
    const started = Date.now()
    let output = ''
    let child
    try {
      child = spawn('cargo', CARGO_ARGS, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    } catch (error) {
      resolve({ error: `could not run cargo: ${error.message}` })
      return
    }
    child.stdout.setEncoding('utf8').on('data', (chunk) => (output += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk) => (output += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), BUILD_TIMEOUT_MS)
    child.on('error', (error) => {
      clearTimeout(timer)
      resolve({ error: `could not run cargo: ${error.message}` })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      if (code !== 0) {
        const tail = output.trim().split('\n').slice(-15).join('\n')
        resolve({ error: `cargo ${CARGO_ARGS.join(' ')} failed (${signal ?? `exit ${code}`}) after ${seconds} s:\n${tail}` })
      } else if (!existsSync(RUST_HAMMER)) {
        resolve({ error: `cargo ${CARGO_ARGS.join(' ')} succeeded but ${RUST_HAMMER} does not exist` })
      } else {
        const compiled = /Compiling/.test(output)
        resolve({ path: RUST_HAMMER, note: `cargo ${compiled ? 'rebuilt the hammer' : 'found the hammer up to date'} in ${seconds} s` })
      }
    })
  })
  return rustHammer
}

/** The Rust hammer's path; fails the test (never substitutes Node) when it cannot be built. */
async function requireRustHammer(t) {
  const built = await buildRustHammer()
  if (built.error) {
    assert.fail(
      `the Rust hammer cannot be built, so Node and Rust sharing a limit cannot be tested: ${built.error}\n` +
        'Fix the build, or set TRYPEMA_TEST_SKIP_RUST=1 to skip these tests.',
    )
  }
  t.diagnostic(built.note)
  return built.path
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
 * Runs the hammers given as `{ kind, path? }` (kind `node` or `rust`) on one key, releases
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

/** `nodeCount` Node hammers and one Rust hammer (failing the test if it cannot be built). */
async function hammersWithRust(t, nodeCount) {
  const path = await requireRustHammer(t)
  return [...Array.from({ length: nodeCount }, () => ({ kind: 'node' })), { kind: 'rust', path }]
}

function describeResults(results) {
  return results.map((r) => `${r.kind}:${r.output.allowed}/${r.output.allowed + r.output.rejected}`).join(' ')
}

test('two Node processes and one Rust process on one hybrid key never exceed a large capacity in any window', { skip: skipWithRust }, async (t) => {
  const specs = await hammersWithRust(t, 2)
  // W = 1 s, rate 300: capacity 300, leases of 50 ms, saturated by 3 x 32 callers for 3 s.
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
  const worst = busiest(times, windowMs)
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
  t.diagnostic(`hammers ${describeResults(results)}; total allowed ${times.length}`)
  t.diagnostic(
    `busiest ${windowMs} ms window: ${worst.count} (starting ${Math.round(worst.at - releasedAt)} ms from the release); ` +
      `whole windows after the first: ${middle.map((m) => `[${m.k}s,${m.k + 1}s)=${m.count}`).join(' ')}`,
  )
  t.diagnostic(`admitted per 100 ms from the release: ${per100ms.join(' ')}`)

  for (const r of results) assert.ok(r.output.allowed > 0, `the ${r.kind} hammer was never admitted: ${describeResults(results)}`)
  assert.ok(worst.count <= capacity, `${worst.count} admitted in the ${windowMs} ms starting ${Math.round(worst.at - releasedAt)} ms from the release`)
  for (const { k, count } of middle) {
    assert.ok(count >= 0.9 * capacity, `only ${count} admitted in [${k} s, ${k + 1} s) (capacity ${capacity})`)
  }
})

for (const [capacity, rate] of [
  [1, 0.1],
  [5, 0.5],
  [50, 5],
]) {
  test(`two Node processes and one Rust process on one hybrid key of capacity ${capacity} (W = 10 s) are admitted exactly ${capacity} in all`, { skip: skipWithRust }, async (t) => {
    const specs = await hammersWithRust(t, 2)
    // The run (2 s) fits in one window: nothing leaves it, so exactly the capacity is admitted;
    // below capacity 16 every call is decided by Redis, above it leases are at most C / 16.
    const { results } = await runHammers(specs, {
      provider: 'hybrid',
      prefix: unique('xs'),
      key: unique('small'),
      rate,
      windowSeconds: 10,
      durationMs: 2000,
      concurrency: 4,
    })
    const total = results.reduce((sum, r) => sum + r.output.allowed, 0)
    t.diagnostic(`allowed ${describeResults(results)}`)
    for (const r of results) assert.ok(r.output.rejected > 0, `the ${r.kind} hammer was never rejected: ${describeResults(results)}`)
    assert.equal(total, capacity, `the processes were admitted ${total} in all: ${describeResults(results)}`)
  })
}

test('a Node process and a Rust process on the redis provider share one limit', { skip: skipWithRust }, async (t) => {
  const specs = await hammersWithRust(t, 1)
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
  t.diagnostic(`allowed ${describeResults(results)}`)
  // First come, first served: which process gets the 100 is not promised, only that together
  // they get exactly 100 (separate limits would admit up to 200) and each saw the key full.
  for (const r of results) assert.ok(r.output.rejected > 0, `the ${r.kind} hammer was never rejected`)
  assert.equal(total, 100, `the processes were admitted ${total} in all`)
})
