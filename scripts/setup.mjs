// Runs before `npm start` and `npm test` (npm's pre-scripts), so that on a fresh clone those two
// commands are all the set-up there is: installs the locked npm dependencies when they are
// missing, builds the addon when it is missing or older than its sources, and for the tests
// makes sure a redis-server is available (installed with apt-get when running as root on
// Debian/Ubuntu). Uses only Node built-ins, since it may run before `npm ci`.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const forTests = process.argv.includes('--tests')

function run(command, args) {
  console.log(`$ ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' })
  if (result.status !== 0) process.exit(result.status ?? 1)
}

function newest(path) {
  const stat = statSync(path)
  if (!stat.isDirectory()) return stat.mtimeMs
  return Math.max(0, ...readdirSync(path).map((name) => newest(join(path, name))))
}

if (!existsSync(join(root, 'node_modules', '.package-lock.json'))) {
  run('npm', ['ci', '--no-audit', '--no-fund'])
}

// `npm test` builds the addon itself; `npm start` needs one that matches the sources.
if (!forTests) {
  const addon = readdirSync(root).find((name) => /^trypema\..*\.node$/.test(name))
  const sources = ['src', 'crates/trypema/src', 'Cargo.toml', 'Cargo.lock'].map((path) => newest(join(root, path)))
  if (addon === undefined || statSync(join(root, addon)).mtimeMs < Math.max(...sources)) {
    run('npx', ['napi', 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
  }
}

if (forTests && spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status !== 0) {
  const canInstall = process.getuid?.() === 0 && spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status === 0
  if (!canInstall) {
    console.error('The tests need redis-server (Debian/Ubuntu: apt-get install -y redis-server).')
    process.exit(1)
  }
  run('apt-get', ['update', '-qq'])
  run('apt-get', ['install', '-y', '-qq', 'redis-server'])
}
