// trypema/express, trypema/express-rate-limit and trypema/fastify as a package: the `exports`
// entries from CommonJS and ESM, the typings under `tsc --strict`, and the `npm start -- --demo`
// example.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))

/** Runs a command in the package root; resolves with its exit code and output. */
function run(command, args, { timeout = 30_000, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${command} ${args.join(' ')} timed out after ${timeout} ms\n${stdout}\n${stderr}`))
    }, timeout)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

test("require('trypema/express') works from CommonJS", async () => {
  const script = `
    const assert = require('node:assert/strict')
    const trypemaExpress = require('trypema/express')
    assert.deepEqual(Object.keys(trypemaExpress).sort(), ['defaultKey', 'rateLimit', 'safeKey'])
    assert.equal(trypemaExpress.defaultKey({ ip: '2001:db8:1:2ab::1' }), '2001:db8:1:200::/56')
    assert.equal(trypemaExpress.safeKey('a:b'), 'a%3Ab')
    const { RateLimiter } = require('trypema')
    RateLimiter.builder().windowSizeSeconds(3).build().then(async (limiter) => {
      const middleware = trypemaExpress.rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 1 })
      assert.equal(typeof middleware, 'function')
      assert.equal(middleware.length, 3)
      await limiter.close()
      console.log('cjs ok')
    })
  `
  const result = await run(process.execPath, ['-e', script])
  assert.equal(result.code, 0, result.stderr)
  assert.equal(result.stdout.trim(), 'cjs ok')
})

test("import from 'trypema/express' works from ESM and is the same module as the CommonJS one", async () => {
  const script = `
    import assert from 'node:assert/strict'
    import { createRequire } from 'node:module'
    import trypemaExpress, { rateLimit, defaultKey, safeKey } from 'trypema/express'
    import { RateLimiter } from 'trypema'
    const require = createRequire(process.cwd() + '/')
    const cjs = require('trypema/express')
    assert.equal(rateLimit, cjs.rateLimit)
    assert.equal(defaultKey, cjs.defaultKey)
    assert.equal(safeKey, cjs.safeKey)
    assert.equal(trypemaExpress, cjs)
    assert.equal(defaultKey({ ip: '::ffff:10.1.2.3' }), '10.1.2.3')
    const limiter = await RateLimiter.builder().build()
    assert.equal(typeof rateLimit({ limiter, provider: 'local', strategy: 'suppressed', rate: 1 }), 'function')
    await limiter.close()
    console.log('esm ok')
  `
  const result = await run(process.execPath, ['--input-type=module', '-e', script])
  assert.equal(result.code, 0, result.stderr)
  assert.equal(result.stdout.trim(), 'esm ok')
})

test("trypema/express-rate-limit and trypema/fastify load from CommonJS and ESM as the same modules", async () => {
  const cjs = `
    const assert = require('node:assert/strict')
    const { TrypemaStore } = require('trypema/express-rate-limit')
    const plugin = require('trypema/fastify')
    assert.equal(typeof TrypemaStore, 'function')
    assert.equal(typeof plugin, 'function')
    assert.equal(plugin.trypemaRateLimit, plugin)
    assert.deepEqual(Object.keys(require('trypema/express-rate-limit')), ['TrypemaStore'])
    console.log('cjs ok')
  `
  const esm = `
    import assert from 'node:assert/strict'
    import { createRequire } from 'node:module'
    import erl, { TrypemaStore } from 'trypema/express-rate-limit'
    import plugin, { trypemaRateLimit, defaultKey, safeKey } from 'trypema/fastify'
    const require = createRequire(process.cwd() + '/')
    assert.equal(TrypemaStore, require('trypema/express-rate-limit').TrypemaStore)
    assert.equal(erl, require('trypema/express-rate-limit'))
    assert.equal(plugin, require('trypema/fastify'))
    assert.equal(trypemaRateLimit, plugin)
    assert.equal(defaultKey, require('trypema/express').defaultKey)
    assert.equal(safeKey, require('trypema/express').safeKey)
    console.log('esm ok')
  `
  const a = await run(process.execPath, ['-e', cjs])
  assert.equal(a.code, 0, a.stderr)
  assert.equal(a.stdout.trim(), 'cjs ok')
  const b = await run(process.execPath, ['--input-type=module', '-e', esm])
  assert.equal(b.code, 0, b.stderr)
  assert.equal(b.stdout.trim(), 'esm ok')
})

test('the adapters typings compile in strict Fastify, express-rate-limit (v7, v8) and ESM consumers', async () => {
  const result = await run('npx', ['tsc', '-p', '__test__/express-typings/tsconfig.adapters.json', '--strict', '--noEmit'], {
    timeout: 60_000,
  })
  assert.equal(result.code, 0, `tsc failed:\n${result.stdout}\n${result.stderr}`)
})

test('the typings compile in a strict TypeScript Express consumer', async () => {
  const result = await run('npx', ['tsc', '-p', '__test__/express-typings', '--strict', '--noEmit'], { timeout: 30_000 })
  assert.equal(result.code, 0, `tsc failed:\n${result.stdout}\n${result.stderr}`)
})

test('the typings are self-contained: all three adapters compile without Express, Fastify, express-rate-limit or Node types', async () => {
  const result = await run(
    'npx',
    ['tsc', '-p', '__test__/express-typings/tsconfig.standalone.json', '--strict', '--noEmit'],
    { timeout: 30_000 },
  )
  assert.equal(result.code, 0, `tsc failed:\n${result.stdout}\n${result.stderr}`)
})

test('`node examples/express-server.mjs --demo` bursts every route, prints a table with 429s and exits 0', async () => {
  const result = await run(process.execPath, ['examples/express-server.mjs', '--demo'], {
    timeout: 60_000,
    env: { PORT: '0', REDIS_URL: '' },
  })
  assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`)
  const lines = result.stdout.split('\n')
  const header = lines.find((line) => line.startsWith('| route'))
  assert.ok(header, `no table in:\n${result.stdout}`)
  const columns = header.split('|').map((cell) => cell.trim()).filter(Boolean)
  assert.deepEqual(columns, ['route', '200', '200 suppressed', '429', '503', 'other'])
  const row = (route) => {
    const line = lines.find((l) => l.startsWith(`| ${route} `))
    assert.ok(line, `no row for ${route}`)
    const cells = line.split('|').map((cell) => cell.trim()).filter(Boolean)
    return Object.fromEntries(columns.map((name, i) => [name, i === 0 ? cells[i] : Number(cells[i])]))
  }
  // Before the table, five requests to /api/hello show the quota counting down.
  const countdown = [...result.stdout.matchAll(/^ {2}200 "hello";r=(\d+);t=\d+$/gm)].map((match) => Number(match[1]))
  assert.deepEqual(countdown, [19, 18, 17, 16, 15], result.stdout)
  const hello = row('/api/hello')
  assert.equal(hello['200'] + hello['429'], 200, JSON.stringify(hello))
  assert.ok(hello['429'] > 0, 'the absolute route answered 429s')
  assert.equal(hello['200'], 15, 'exactly floor(window × rate) admitted, less the five before the burst')
  // With its redis-server stopped, the limiter decides locally and says so.
  assert.match(result.stdout, /^ {2}200 Trypema-Degraded: 1$/m, result.stdout)
  const search = row('/api/search?q=rust')
  assert.equal(search['200'] + search['200 suppressed'] + search['503'], 200, JSON.stringify(search))
  assert.ok(search['503'] > 0, 'the suppressed route shed load')
  assert.ok(search['200'] + search['200 suppressed'] <= 45, 'never more than the hard limit admitted')
  assert.match(result.stderr, /\[#+\]\s+200\/200/, 'a progress bar on stderr')
})
