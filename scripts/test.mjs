// `npm test`: builds the addon, starts a private redis-server on a free loopback port, then runs
// the Rust tests, the Node tests (which include the typings check) against it, and stops it.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { startRedis } from './redis-server.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))

function run(command, args, env = {}) {
  console.log(`\n$ ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`})`)
  }
}

run('npx', ['napi', 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
const redis = await startRedis()
console.log(`test redis-server: ${redis.url}`)
const env = { TRYPEMA_TEST_REDIS_URL: redis.url }
try {
  run('cargo', ['test', '-p', 'trypema', '--all-features', '--', '--test-threads=2'], env)
  run('node', ['--test', '--test-concurrency=1', '__test__/'], env)
} catch (error) {
  console.error(`\n${error.message}`)
  process.exitCode = 1
} finally {
  await redis.stop()
}
