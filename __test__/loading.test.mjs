// The package loads as ESM (named and default), as CommonJS, and by its own name through "exports".
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { RateLimiter, RateLimiterBuilder } from '../index.mjs'
import trypemaDefault from '../index.mjs'

const require = createRequire(import.meta.url)
const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url))
const run = promisify(execFile)

/** Runs `node <args>` in the package root and returns its stdout, trimmed. */
async function node(args) {
  const { stdout, stderr } = await run(process.execPath, args, { cwd: PACKAGE_ROOT, timeout: 10_000 })
  assert.equal(stderr, '')
  return stdout.trim()
}

test('ESM named import works', async () => {
  assert.equal(typeof RateLimiter, 'function')
  assert.equal(typeof RateLimiter.builder, 'function')
  const builder = RateLimiter.builder()
  assert.ok(builder instanceof RateLimiterBuilder)
  const rl = await builder.windowSizeSeconds(1).build()
  assert.deepEqual(rl.local.absolute.inc('loading-esm', 1), { kind: 'allowed' })
  assert.equal(rl.local.absolute.inc('loading-esm', 1).kind, 'rejected')
  await rl.close()
})

test('ESM default import is the CommonJS module object', async () => {
  assert.equal(typeof trypemaDefault, 'object')
  assert.equal(trypemaDefault.RateLimiter, RateLimiter)
  assert.equal(trypemaDefault.RateLimiterBuilder, RateLimiterBuilder)
  const rl = await trypemaDefault.RateLimiter.builder().build()
  assert.ok(rl instanceof RateLimiter)
  await rl.close()
})

test('CommonJS require of index.js gives the same classes', async () => {
  const cjs = require('../index.js')
  assert.deepEqual(Object.keys(cjs).sort(), ['RateLimiter', 'RateLimiterBuilder'])
  assert.equal(cjs.RateLimiter, RateLimiter)
  assert.equal(cjs.RateLimiterBuilder, RateLimiterBuilder)
  assert.equal(cjs, trypemaDefault)
  const rl = await cjs.RateLimiter.builder().build()
  assert.ok(rl instanceof RateLimiter, 'instanceof must agree across the CJS and ESM entries')
  await rl.close()
})

test('the package resolves by name from inside itself, for require and import', () => {
  // Self-reference goes through package.json "exports".
  assert.equal(require.resolve('trypema'), require.resolve('../index.js'))
  assert.equal(require('trypema').RateLimiter, RateLimiter)
  assert.equal(require('trypema/package.json').name, 'trypema')
  assert.throws(() => require('trypema/binding.js'), { code: 'ERR_PACKAGE_PATH_NOT_EXPORTED' })
})

test("import('trypema') gives the same classes as the relative import", async () => {
  const byName = await import('trypema')
  assert.equal(byName.RateLimiter, RateLimiter)
  assert.equal(byName.default.RateLimiter, RateLimiter)
})

test("a CommonJS process can require('trypema')", async () => {
  const script = `
    const { RateLimiter } = require('trypema')
    RateLimiter.builder().windowSizeSeconds(1).build().then(async (rl) => {
      const first = rl.local.absolute.inc('cjs', 1)
      const second = rl.local.absolute.inc('cjs', 1)
      console.log(JSON.stringify([typeof RateLimiter, first.kind, second.kind, second.windowSizeSeconds]))
      await rl.close()
    })`
  assert.deepEqual(JSON.parse(await node(['-e', script])), ['function', 'allowed', 'rejected', 1])
})

test("an ES module process can import from 'trypema'", async () => {
  const script = `
    import { RateLimiter } from 'trypema'
    import trypema from 'trypema'
    import { createRequire } from 'node:module'
    const require = createRequire(process.cwd() + '/')
    const rl = await RateLimiter.builder().windowSizeSeconds(1).build()
    const first = rl.local.suppressed.inc('esm', 1)
    const second = rl.local.suppressed.inc('esm', 1)
    console.log(JSON.stringify([
      first.kind,
      second.kind,
      trypema.RateLimiter === RateLimiter,
      require('trypema').RateLimiter === RateLimiter,
    ]))
    await rl.close()`
  assert.deepEqual(JSON.parse(await node(['--input-type=module', '-e', script])), [
    'allowed',
    'suppressed',
    true,
    true,
  ])
})
