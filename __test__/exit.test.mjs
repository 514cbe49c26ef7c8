// A program using trypema must exit on its own once its work is done, whether or not it closes
// its limiters: background work must never hold the event loop (or the process) open.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const INDEX_JS = JSON.stringify(fileURLToPath(new URL('../index.js', import.meta.url)))
const INDEX_MJS = JSON.stringify(new URL('../index.mjs', import.meta.url).href)
const EXIT_TIMEOUT_MS = 10_000

/**
 * Runs `node ...args`; resolves once it exits. A child still running after the timeout is
 * killed and reported with `killed: true`.
 */
function runChild(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let killed = false
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => {
      killed = true
      child.kill('SIGKILL')
    }, EXIT_TIMEOUT_MS)
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout: stdout.trim(), stderr, killed })
    })
  })
}

function assertCleanExit(result, expectedStdout) {
  assert.equal(result.killed, false, `the child did not exit within ${EXIT_TIMEOUT_MS} ms and was killed`)
  assert.equal(result.signal, null, `the child died of ${result.signal}: ${result.stderr}`)
  assert.equal(result.code, 0, `exit code ${result.code}: ${result.stderr}`)
  assert.equal(result.stdout, expectedStdout)
}

test('a program that closes its limiter exits with code 0', async () => {
  const script = `
    import { RateLimiter } from ${INDEX_MJS}
    const rl = await RateLimiter.builder().windowSizeSeconds(1).rateGroupSizeMs(10).build()
    const kinds = []
    for (let i = 0; i < 3; i++) kinds.push(rl.local.absolute.inc('user', 2).kind)
    kinds.push(rl.local.suppressed.inc('user', 2).kind)
    kinds.push(String(rl.local.suppressed.getSuppressionFactor('user')))
    await rl.close()
    console.log(kinds.join(','))`
  assertCleanExit(await runChild(['--input-type=module', '-e', script]), 'allowed,allowed,rejected,allowed,0')
})

test('a program that never closes its limiter still exits with code 0', async () => {
  const script = `
    const { RateLimiter } = require(${INDEX_JS})
    RateLimiter.builder().windowSizeSeconds(1).build().then((rl) => {
      let allowed = 0
      for (let i = 0; i < 1000; i++) if (rl.local.absolute.inc('k' + (i % 10), 50).kind === 'allowed') allowed++
      for (let i = 0; i < 100; i++) rl.local.suppressed.inc('s', 10)
      console.log('allowed ' + allowed)
    })`
  assertCleanExit(await runChild(['-e', script]), 'allowed 500')
})

test('a program whose unclosed limiter runs frequent cleanups exits with code 0', async () => {
  const script = `
    import { RateLimiter } from ${INDEX_MJS}
    const rl = await RateLimiter.builder()
      .windowSizeSeconds(1).cleanupIntervalMs(1).staleAfterMs(1000).build()
    for (let i = 0; i < 100; i++) rl.local.absolute.inc('k' + i, 1)
    await new Promise((resolve) => setTimeout(resolve, 50)) // let cleanup run a few times
    console.log(rl.local.absolute.inc('after', 1).kind + ' ' + rl.local.absolute.inc('k0', 1).kind)`
  // 'k0' is still within its window and staleAfterMs: cleanup must not have dropped it.
  assertCleanExit(await runChild(['--input-type=module', '-e', script]), 'allowed rejected')
})

test('a program that builds 50 limiters, drops them unclosed and collects garbage exits 0', async () => {
  const script = `
    const { RateLimiter } = require(${INDEX_JS})
    ;(async () => {
      let allowed = 0
      for (let i = 0; i < 50; i++) {
        const rl = await RateLimiter.builder().windowSizeSeconds(1).cleanupIntervalMs(5).build()
        if (rl.local.absolute.inc('k', 1).kind === 'allowed') allowed++
        rl.local.suppressed.inc('k', 1)
      }
      global.gc()
      await new Promise((resolve) => setTimeout(resolve, 20))
      global.gc()
      // A limiter built after the others were collected works normally.
      const rl = await RateLimiter.builder().windowSizeSeconds(1).build()
      const later = rl.local.absolute.inc('k', 1).kind + '/' + rl.local.absolute.inc('k', 1).kind
      console.log(allowed + ' ' + later)
    })()`
  assertCleanExit(await runChild(['--expose-gc', '-e', script]), '50 allowed/rejected')
})

test('a worker thread that leaves its limiter unclosed exits, and so does the process', async () => {
  const worker = `
    const { parentPort } = require('node:worker_threads')
    const { RateLimiter } = require(${INDEX_JS})
    RateLimiter.builder().windowSizeSeconds(1).cleanupIntervalMs(1).build().then((rl) => {
      parentPort.postMessage(rl.local.absolute.inc('w', 1).kind + '/' + rl.local.absolute.inc('w', 1).kind)
    })`
  const script = `
    const { Worker } = require('node:worker_threads')
    const { RateLimiter } = require(${INDEX_JS})
    ;(async () => {
      const main = await RateLimiter.builder().windowSizeSeconds(1).build()
      main.local.absolute.inc('w', 1)
      const results = []
      for (let i = 0; i < 3; i++) {
        const w = new Worker(${JSON.stringify(worker)}, { eval: true })
        w.on('message', (m) => results.push(m))
        results.push('exit ' + await new Promise((resolve) => w.on('exit', resolve)))
      }
      // Each thread has its own limiters: the main thread's state is untouched by the workers'.
      results.push(main.local.absolute.inc('w', 1).kind)
      console.log(results.join(','))
    })()`
  assertCleanExit(
    await runChild(['-e', script]),
    'allowed/rejected,exit 0,allowed/rejected,exit 0,allowed/rejected,exit 0,rejected',
  )
})

test('a worker terminated while its limiter is in use does not take the process down', async () => {
  const worker = `
    const { parentPort } = require('node:worker_threads')
    const { RateLimiter } = require(${INDEX_JS})
    RateLimiter.builder().windowSizeSeconds(1).build().then((rl) => {
      parentPort.postMessage('ready')
      for (;;) rl.local.absolute.inc('busy', 1e9)
    })`
  const script = `
    const { Worker } = require('node:worker_threads')
    const w = new Worker(${JSON.stringify(worker)}, { eval: true })
    w.once('message', async () => {
      const code = await w.terminate()
      console.log('terminated ' + code)
    })`
  assertCleanExit(await runChild(['-e', script]), 'terminated 1')
})

test('a program whose Redis build() fails (refused, silent server) exits with code 0', async () => {
  const script = `
    import net from 'node:net'
    import { RateLimiter } from ${INDEX_MJS}
    const codes = []
    try { await RateLimiter.builder('redis://127.0.0.1:1/').build() } catch (error) { codes.push(error.code) }
    const silent = net.createServer((socket) => socket.on('error', () => {}))
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const url = 'redis://127.0.0.1:' + silent.address().port + '/'
    try { await RateLimiter.builder({ url, connectTimeoutMs: 200 }).build() } catch (error) { codes.push(error.code) }
    // Only the server is closed here: the accepted socket keeps the process alive until the
    // failed build has closed its side of the connection.
    silent.close()
    console.log(codes.join(','))`
  assertCleanExit(await runChild(['--input-type=module', '-e', script]), 'TRYPEMA_REDIS,TRYPEMA_REDIS')
})
