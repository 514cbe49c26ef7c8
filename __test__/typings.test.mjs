// Type-checks the TypeScript consumer in __test__/typings against index.d.ts.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url))
const NPX = process.platform === 'win32' ? 'npx.cmd' : 'npx'

/** Runs `npx tsc ...args` in the package root; resolves with its exit code and output. */
function tsc(args) {
  return new Promise((resolve, reject) => {
    execFile(NPX, ['tsc', ...args], { cwd: PACKAGE_ROOT, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') return reject(error)
      resolve({ code: error ? error.code : 0, output: stdout + stderr })
    })
  })
}

test('the TypeScript consumer type-checks under --strict', async () => {
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
