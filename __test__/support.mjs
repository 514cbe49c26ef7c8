// Shared helpers of the Node tests (not a test file itself).
//
// Redis: tests that need the shared server read TRYPEMA_TEST_REDIS_URL; tests that stop, pause
// or reconfigure a server start a private redis-server (scripts/redis-server.mjs). When either
// is missing the tests FAIL with a message saying what to set up, unless
// TRYPEMA_TEST_ALLOW_SKIP=1 is set, in which case they are skipped with that message as reason.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

import { redisServerInstalled } from '../scripts/redis-server.mjs'

export const ALLOW_SKIP = process.env.TRYPEMA_TEST_ALLOW_SKIP === '1'

export const ALLOWED = Object.freeze({ kind: 'allowed' })
/** What a wrong argument type must throw. */
export const typeError = { constructor: TypeError, name: 'TypeError', message: /\S/ }
/** What an invalid value must throw or reject with: a plain `Error` carrying `code`. */
export function codeError(code) {
  return { constructor: Error, name: 'Error', code, message: /\S/ }
}

/**
 * A requirement of some tests (`missingReason` is null when it is met): `skip` is the option to
 * give them (false, or the reason when skipping is allowed); `check()` throws the reason when the
 * requirement is missing, so a `before` hook calling it fails every test of the file or suite
 * with that message.
 */
export function requirement(missingReason) {
  if (missingReason === null) return { skip: false, check() {} }
  if (ALLOW_SKIP) {
    console.log(`# skipping: ${missingReason} (TRYPEMA_TEST_ALLOW_SKIP=1)`)
    return { skip: `${missingReason} (TRYPEMA_TEST_ALLOW_SKIP=1)`, check() {} }
  }
  return {
    skip: false,
    check() {
      throw new Error(`${missingReason}; set TRYPEMA_TEST_ALLOW_SKIP=1 to skip these tests instead`)
    },
  }
}

/** The shared Redis of the test run: `{ url, skip, check() }`. */
export const sharedRedis = {
  url: process.env.TRYPEMA_TEST_REDIS_URL,
  ...requirement(
    process.env.TRYPEMA_TEST_REDIS_URL
      ? null
      : 'TRYPEMA_TEST_REDIS_URL is not set: start a redis-server and set it, e.g. redis://127.0.0.1:6379/',
  ),
}

/** A redis-server binary for private servers: `{ skip, check() }`. */
export const privateRedis = requirement(
  redisServerInstalled() ? null : 'redis-server is not installed (needed for a private Redis server)',
)

/** A command-line tool some tests need (e.g. prlimit, setpriv): `{ skip, check() }`. */
export function tool(name, args = ['--version']) {
  const found = spawnSync(name, args, { stdio: 'ignore' }).status === 0
  return requirement(found ? null : `${name} is not installed`)
}

export function unique(label = 'k') {
  return `${label}${randomBytes(6).toString('hex')}`
}

/** Fails (instead of hanging) when `promise` takes longer than `ms`. */
export async function within(ms, promise, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Polls `probe` (sync or async) every `intervalMs` until `done(value)` holds; returns the last
 * value. Fails after `timeoutMs` with `what` and the last value.
 */
export async function waitFor(probe, done, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (done(value)) return value
    if (Date.now() > deadline) {
      assert.fail(`${what}: not reached within ${timeoutMs} ms (last value ${JSON.stringify(value)})`)
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/**
 * Runs `node ...args` and resolves when it exits: `{ code, signal, stdout, stderr, killed }`.
 * A child still running after `timeoutMs` is killed (`killed: true`). `options` are passed to
 * spawn (env, cwd, uid, gid...).
 */
export function runNode(args, { timeoutMs = 20_000, command = process.execPath, ...options } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options })
    let stdout = ''
    let stderr = ''
    let killed = false
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => {
      killed = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, killed })
    })
  })
}

/** Asserts that a child from `runNode` exited by itself with code 0. */
export function assertCleanExit(result, what = 'the child') {
  assert.equal(result.killed, false, `${what} did not finish in time and was killed; stderr: ${result.stderr}`)
  assert.equal(result.signal, null, `${what} died of ${result.signal}; stderr: ${result.stderr}`)
  assert.equal(result.code, 0, `${what} exited with ${result.code}; stderr: ${result.stderr}`)
}

/**
 * A long-running child `node` process driven line by line: `send(line)` writes to its stdin,
 * `next()` resolves with its next stdout line, `exit` with `{ code, signal, stderr }`.
 */
export function lineChild(args, { timeoutMs = 30_000, command = process.execPath, ...options } = {}) {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options })
  let buffered = ''
  const lines = []
  const waiters = []
  let stderr = ''
  let ended = false
  child.stdin.on('error', () => {})
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
  child.stdout.setEncoding('utf8').on('data', (chunk) => {
    buffered += chunk
    let newline
    while ((newline = buffered.indexOf('\n')) >= 0) {
      lines.push(buffered.slice(0, newline))
      buffered = buffered.slice(newline + 1)
    }
    while (lines.length > 0 && waiters.length > 0) waiters.shift().resolve(lines.shift())
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const exit = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      ended = true
      for (const waiter of waiters.splice(0)) {
        waiter.reject(new Error(`the child exited (${code ?? signal}) before printing a line; stderr: ${stderr}`))
      }
      resolve({ code, signal, stderr })
    })
  })
  return {
    child,
    exit,
    get stderr() {
      return stderr
    },
    send(line) {
      child.stdin.write(`${line}\n`)
    },
    next() {
      if (lines.length > 0) return Promise.resolve(lines.shift())
      if (ended) return Promise.reject(new Error(`the child has exited; stderr: ${stderr}`))
      return new Promise((resolve, reject) => waiters.push({ resolve, reject }))
    },
  }
}

/** Every key matching `pattern`, via SCAN (never KEYS on a shared server); ioredis client. */
export async function scanAll(client, pattern) {
  const found = []
  let cursor = '0'
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    found.push(...keys)
    cursor = next
  } while (cursor !== '0')
  return found.sort()
}

/** Escapes Redis glob metacharacters. */
export function globEscape(text) {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

/** The Redis server's clock in whole milliseconds (TIME), as the scripts read it; ioredis client. */
export async function redisTimeMs(client) {
  const [seconds, micros] = await client.time()
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
}
