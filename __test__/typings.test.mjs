// Type-checks the TypeScript consumer in __test__/typings against index.d.ts with the
// TypeScript compiler in node_modules (`tsc --noEmit --strict`), checks that the check rejects
// misuse, and that the typed error codes are exactly the ones the library produces.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { RateLimiter, RateLimiterBuilder } from '../index.mjs'

const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url))
const TSC = join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc')

/** Runs the local `tsc ...args` in the package root; resolves with its exit code and output. */
function tsc(args) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [TSC, ...args], { cwd: PACKAGE_ROOT, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') return reject(error)
      resolve({ code: error ? error.code : 0, output: stdout + stderr })
    })
  })
}

test('the TypeScript consumer type-checks under --strict (every @ts-expect-error is a real error)', async () => {
  const { code, output } = await tsc(['-p', '__test__/typings', '--strict', '--noEmit'])
  assert.equal(code, 0, output)
})

test('the type check does reject misuse (sanity check of the check itself)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trypema-typings-'))
  try {
    const indexJs = join(PACKAGE_ROOT, 'index.js').replaceAll('\\', '/')
    await writeFile(
      join(dir, 'misuse.ts'),
      `import { RateLimiter } from ${JSON.stringify(indexJs)}
export async function misuse(): Promise<number> {
  const rl = await RateLimiter.builder().build()
  rl.local.absolute.inc(1, 5)
  const d = rl.local.absolute.inc('k', 1)
  return d.retryAfterMs
}
`,
    )
    await writeFile(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'node16', moduleResolution: 'node16', target: 'es2022', types: [], strict: true, noEmit: true },
        files: ['misuse.ts'],
      }),
    )
    const { code, output } = await tsc(['-p', dir, '--strict', '--noEmit'])
    assert.notEqual(code, 0, 'tsc accepted code that misuses the API')
    assert.match(output, /TS2345/, 'a number passed as the key must be reported')
    assert.match(output, /TS2339/, 'retryAfterMs without narrowing must be reported')
    assert.doesNotMatch(output, /TS2307/, 'the package typings must have been found')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('TrypemaErrorCode lists exactly the codes of the core error type', () => {
  const declared = new Set(
    [...readFileSync(join(PACKAGE_ROOT, 'index.d.ts'), 'utf8').matchAll(/\| '(TRYPEMA_[A-Z_]+)'/g)].map((match) => match[1]),
  )
  const produced = new Set(
    [...readFileSync(join(PACKAGE_ROOT, 'crates', 'trypema', 'src', 'error.rs'), 'utf8').matchAll(/"(TRYPEMA_[A-Z_]+)"/g)].map((match) => match[1]),
  )
  for (const code of ['TRYPEMA_INTERNAL', 'TRYPEMA_REDIS_TIMEOUT', 'TRYPEMA_REDIS_AUTH', 'TRYPEMA_REDIS', 'TRYPEMA_CLOSED']) {
    assert.ok(declared.has(code), `${code} is missing from TrypemaErrorCode`)
  }
  // The loader's own codes (thrown by require('trypema') itself, see platform.js).
  for (const code of ['TRYPEMA_UNSUPPORTED_PLATFORM', 'TRYPEMA_NATIVE_LOAD_FAILED']) produced.add(code)
  assert.deepEqual([...declared].sort(), [...produced].sort())
})

test('the runtime matches the typings: the builder constructor, windowSizeSeconds, provider properties', async () => {
  assert.equal(typeof RateLimiterBuilder, 'function')
  const rl = await new RateLimiterBuilder().windowSizeSeconds(7).build()
  try {
    assert.ok(rl instanceof RateLimiter)
    assert.equal(rl.windowSizeSeconds, 7)
    assert.equal(typeof rl.local.absolute.incWithQuota, 'function')
    assert.throws(() => {
      rl.windowSizeSeconds = 5
    }, TypeError)
    assert.equal(rl.windowSizeSeconds, 7)
    assert.throws(() => rl.redis, { code: 'TRYPEMA_REDIS_NOT_CONFIGURED' })
    const metrics = rl.metrics()
    for (const name of ['redisRoundTrips', 'redisFailures', 'redisLatencyP50Ms', 'redisLatencyP99Ms', 'breakerOpened', 'hybridLeasedUnits', 'hybridReturnedUnits']) {
      assert.equal(typeof metrics[name], 'number', name)
    }
    assert.equal(typeof metrics.redisDegraded, 'boolean')
    for (const entry of metrics.decisions) {
      assert.ok(['local', 'redis', 'hybrid'].includes(entry.provider))
      assert.ok(['absolute', 'suppressed'].includes(entry.strategy))
    }
    assert.equal(typeof rl.metricsText(), 'string')
  } finally {
    await rl.close()
  }
  // The options-object forms the typings accept are accepted at runtime (checked synchronously).
  assert.ok(new RateLimiterBuilder({ url: 'redis://127.0.0.1:1/' }) instanceof RateLimiterBuilder)
  assert.ok(RateLimiter.builder({ cluster: ['redis://127.0.0.1:1/'] }) instanceof RateLimiterBuilder)
  assert.ok(RateLimiter.builder({ sentinel: { urls: ['redis://127.0.0.1:1/'], masterName: 'm' } }) instanceof RateLimiterBuilder)
  assert.ok(RateLimiter.builder({ url: 'rediss://h/', tls: { ca: Buffer.from('PEM'), cert: 'PEM', key: new Uint8Array([80]) } }) instanceof RateLimiterBuilder)
})
