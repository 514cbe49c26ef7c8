// The Redis provider across processes: admission is exact however many processes share a key,
// and a program that uses the Redis provider exits by itself.
import { test, before } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'

import { sharedRedis } from './support.mjs'

const skip = sharedRedis.skip

const HAMMER = fileURLToPath(new URL('./fixtures/hammer.mjs', import.meta.url))
const INDEX_MJS = JSON.stringify(new URL('../index.mjs', import.meta.url).href)
const CHILD_TIMEOUT_MS = 20_000

const url = sharedRedis.url

before(() => sharedRedis.check())

function unique(label) {
  return `${label}${randomBytes(6).toString('hex')}`
}

/**
 * Spawns `node ...args`. `lines` yields stdout line by line; `exit` resolves with the exit
 * status once the child has exited, or after `timeoutMs` (the child is then killed).
 */
function spawnNode(args, timeoutMs) {
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const lineWaiters = []
  child.stdout.setEncoding('utf8').on('data', (chunk) => {
    stdout += chunk
    for (const waiter of lineWaiters.splice(0)) waiter()
  })
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
  child.stdin.on('error', () => {})
  let killed = false
  const timer = setTimeout(() => {
    killed = true
    child.kill('SIGKILL')
  }, timeoutMs)
  const exit = new Promise((resolve, reject) => {
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      for (const waiter of lineWaiters.splice(0)) waiter()
      resolve({ code, signal, killed, stdout, stderr })
    })
  })
  /** Resolves once stdout contains `text` (or the child has exited). */
  async function waitFor(text) {
    while (!stdout.includes(text) && child.exitCode === null && child.signalCode === null) {
      await new Promise((resolve) => lineWaiters.push(resolve))
    }
    return stdout.includes(text)
  }
  return { child, exit, waitFor }
}

test('4 processes × 750 attempts on one key of capacity 500 admit exactly 500', { skip }, async () => {
  const key = unique('exact')
  const prefix = unique('exactp')
  const processes = Array.from({ length: 4 }, () =>
    spawnNode([HAMMER, url, key, prefix, '750', '64', 'barrier'], CHILD_TIMEOUT_MS),
  )
  // Release all four together, once every one is connected.
  for (const p of processes) {
    const ready = await p.waitFor('ready\n')
    if (!ready) {
      const { code, stderr } = await p.exit
      assert.fail(`a hammer exited before it was ready (code ${code}): ${stderr}`)
    }
  }
  for (const p of processes) p.child.stdin.end('go\n')

  const results = await Promise.all(processes.map((p) => p.exit))
  let allowed = 0
  let rejected = 0
  for (const [i, result] of results.entries()) {
    assert.equal(result.killed, false, `hammer ${i} did not finish within ${CHILD_TIMEOUT_MS} ms`)
    assert.equal(result.code, 0, `hammer ${i} exited with ${result.code ?? result.signal}: ${result.stderr}`)
    const lines = result.stdout.trim().split('\n')
    assert.equal(lines[0], 'ready')
    const counts = JSON.parse(lines.at(-1))
    assert.equal(counts.allowed + counts.rejected, 750, `hammer ${i}: ${lines.at(-1)}`)
    allowed += counts.allowed
    rejected += counts.rejected
  }
  // Capacity floor(10 s × 50/s) = 500, shared by all four processes.
  assert.equal(allowed, 500)
  assert.equal(rejected, 2500)
})

test('a program using the Redis provider exits by itself without close()', { skip }, async () => {
  const key = unique('exit')
  const script = `
    import { RateLimiter } from ${INDEX_MJS}
    const rl = await RateLimiter.builder(${JSON.stringify(url)}).windowSizeSeconds(1).rateGroupSizeMs(10).build()
    const kinds = []
    for (let i = 0; i < 3; i++) kinds.push((await rl.redis.absolute.inc(${JSON.stringify(key)}, 2)).kind)
    kinds.push((await rl.redis.suppressed.inc(${JSON.stringify(key)}, 2)).kind)
    kinds.push(String(await rl.redis.suppressed.getSuppressionFactor(${JSON.stringify(key)})))
    // A batch still in flight when the script body ends must finish and let the process exit.
    Promise.all([rl.redis.absolute.isAllowed(${JSON.stringify(key)}), rl.redis.absolute.inc('other${key}', 5)])
      .then((ds) => console.log(kinds.concat(ds.map((d) => d.kind)).join(',')))`
  const started = Date.now()
  const { child, exit } = spawnNode(['--input-type=module', '-e', script], 10_000)
  child.stdin.end()
  const result = await exit
  assert.equal(result.killed, false, 'the child did not exit within 10 s and was killed')
  assert.equal(result.signal, null, result.stderr)
  assert.equal(result.code, 0, result.stderr)
  assert.equal(result.stdout.trim(), 'allowed,allowed,rejected,allowed,0,rejected,allowed')
  assert.ok(Date.now() - started < 10_000)
})
