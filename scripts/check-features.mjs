// Enabling both Redis runtime features must fail to compile with a message that says why
// (issue 16): this builds the crate with both and checks the compiler's output.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const result = spawnSync('cargo', ['check', '-p', 'trypema', '--features', 'redis-tokio,redis-smol', '--message-format', 'short'], {
  cwd: root,
  encoding: 'utf8',
})
const output = `${result.stdout}${result.stderr}`
const expected = 'enable exactly one Redis runtime feature'
if (result.status === 0) {
  console.error('cargo check with redis-tokio and redis-smol succeeded; it must fail')
  console.log('0 passed, 1 failed')
  process.exit(1)
}
if (!output.includes(expected)) {
  console.error(`cargo check failed, but without the message ${JSON.stringify(expected)}:\n${output}`)
  console.log('0 passed, 1 failed')
  process.exit(1)
}
console.log(`both runtime features refused: "${output.split('\n').find((line) => line.includes(expected)).trim()}"`)
console.log('1 passed, 0 failed')
