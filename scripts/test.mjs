// `npm test`: builds the addon, starts a private redis-server on a free loopback port, then runs
// every suite against it: the Rust crate without features and under each runtime feature, the
// style checks, the Node tests (typings included), the packaging checks. Stops at the first
// failing step and says which; prints a summary of all steps at the end.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { startRedis } from './redis-server.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const steps = []

function run(name, command, args, env = {}) {
  console.log(`\n=== ${name}\n$ ${command} ${args.join(' ')}`)
  const started = Date.now()
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })
  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  const ok = result.status === 0
  steps.push({ name, ok, seconds })
  if (!ok) {
    throw new Error(`${name} failed (${result.signal ?? `exit ${result.status}`}): ${command} ${args.join(' ')}`)
  }
}

// Node 22+ no longer takes a directory for `node --test`: name the files.
const nodeTests = readdirSync(new URL('../__test__/', import.meta.url))
  .filter((name) => name.endsWith('.test.mjs'))
  .sort()
  .map((name) => `__test__/${name}`)

let redis = null
try {
  run('build the addon', 'npx', ['napi', 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
  redis = await startRedis()
  console.log(`test redis-server: ${redis.url}`)
  const env = { TRYPEMA_TEST_REDIS_URL: redis.url }
  run('rust: style', 'cargo', ['fmt', '--all', '--', '--check'])
  run('rust: local provider only (no features)', 'cargo', ['test', '-p', 'trypema', '--', '--test-threads=2'], env)
  run('rust: redis-tokio', 'cargo', ['test', '-p', 'trypema', '--features', 'redis-tokio', '--', '--test-threads=2'], env)
  run('rust: redis-smol', 'cargo', ['test', '-p', 'trypema', '--features', 'redis-smol', '--', '--test-threads=2'], env)
  run('rust: both runtime features are refused', 'node', ['scripts/check-features.mjs'])
  run('rust: lints', 'cargo', ['clippy', '--workspace', '--all-targets', '--features', 'trypema/redis-tokio', '--', '-D', 'warnings'])
  run('rust: docs', 'cargo', ['doc', '-p', 'trypema', '--features', 'redis-tokio', '--no-deps'], { RUSTDOCFLAGS: '-D warnings' })
  run('rust: crate package', 'cargo', ['package', '-p', 'trypema', '--allow-dirty', '--no-verify', '--quiet'])
  run('node tests', 'node', ['--test', '--test-concurrency=1', ...nodeTests], env)
  run('packaging: workflows lint', 'node', ['scripts/lint-workflows.mjs'])
  run('packaging: platform message', 'node', ['scripts/platform-message-test.mjs'])
  run('packaging: npm run package', 'node', ['scripts/package.mjs'])
  run('packaging: glibc floor', 'node', ['scripts/check-glibc.mjs', '--max', '2.17'])
  run('packaging: install without a toolchain', 'node', ['scripts/install-test.mjs'])
  run('packaging: Node 22 and 24', 'node', ['scripts/node-versions-test.mjs'])
} catch (error) {
  console.error(`\n${error.message}`)
  process.exitCode = 1
} finally {
  await redis?.stop()
  console.log('\n=== summary')
  for (const step of steps) console.log(`${step.ok ? 'ok  ' : 'FAIL'} ${step.name} (${step.seconds} s)`)
}
