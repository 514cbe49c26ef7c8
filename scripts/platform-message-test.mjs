// The message a user gets when no prebuilt addon fits the machine: each case runs a child
// `node` whose process.platform / process.arch are overridden by a preload, loads the package's
// binding.js (and index.js, once it routes load failures through platform.js), and checks the
// Error that platform.js's explainLoadFailure() makes of the failure.
//
//   node scripts/platform-message-test.mjs [package-dir]    (default: this repository)
//
// Prints one line per check and `N passed, N failed`; exits 1 on a failure.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const packageDir = resolve(process.argv[2] ?? fileURLToPath(new URL('..', import.meta.url)))
const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'))
const work = mkdtempSync(join(tmpdir(), 'trypema-platform-'))
const preload = join(work, 'fake-platform.cjs')
writeFileSync(
  preload,
  `'use strict'
if (process.env.FAKE_PLATFORM) Object.defineProperty(process, 'platform', { value: process.env.FAKE_PLATFORM })
if (process.env.FAKE_ARCH) Object.defineProperty(process, 'arch', { value: process.env.FAKE_ARCH })
`,
)

// Loads `entry` in a child node on the faked platform; reports what it threw, as JSON.
function loadOn(platform, arch, entry) {
  const script = `
    const path = require('node:path')
    const dir = ${JSON.stringify(packageDir)}
    let explained
    try {
      require(path.join(dir, ${JSON.stringify(entry)}))
      explained = { loaded: true }
    } catch (error) {
      const e = ${JSON.stringify(entry)} === 'binding.js' ? require(path.join(dir, 'platform.js')).explainLoadFailure(error) : error
      explained = { code: e.code, message: e.message, hasCause: e.cause !== undefined }
    }
    process.stdout.write(JSON.stringify(explained))
  `
  const result = spawnSync(process.execPath, ['--require', preload, '-e', script], {
    env: { ...process.env, FAKE_PLATFORM: platform, FAKE_ARCH: arch, NAPI_RS_NATIVE_LIBRARY_PATH: '' },
    encoding: 'utf8',
    timeout: 30_000,
  })
  if (result.status !== 0) throw new Error(`child node exited ${result.status}: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const targets = manifest.napi.targets
const results = []
function check(name, fn) {
  try {
    fn()
    results.push(true)
    console.log(`ok   ${name}`)
  } catch (error) {
    results.push(false)
    console.log(`FAIL ${name}\n     ${error.message.replaceAll('\n', '\n     ')}`)
  }
}
function expect(condition, what, got) {
  if (!condition) throw new Error(`${what}\n--- message ---\n${got}`)
}

const ids = ['linux-x64-gnu', 'linux-x64-musl', 'linux-arm64-gnu', 'linux-arm64-musl', 'darwin-x64', 'darwin-arm64', 'win32-x64-msvc']

for (const [platform, arch] of [
  ['freebsd', 'riscv64'],
  ['win32', 'ia32'],
  ['linux', 's390x'],
  ['sunos', 'x64'],
]) {
  check(`unsupported ${platform} ${arch}: names the platform, lists every target, says how to build from source`, () => {
    const e = loadOn(platform, arch, 'binding.js')
    expect(!e.loaded, 'binding.js loaded on a faked platform', JSON.stringify(e))
    expect(e.code === 'TRYPEMA_UNSUPPORTED_PLATFORM', `code is ${e.code}`, e.message)
    expect(e.hasCause, 'the original error is not kept as cause', e.message)
    expect(e.message.includes(`${platform} ${arch}`), `does not name "${platform} ${arch}"`, e.message)
    expect(e.message.includes(process.version), 'does not name the Node.js version', e.message)
    for (const id of ids) expect(e.message.includes(id), `does not list ${id}`, e.message)
    expect(targets.length === ids.length, `package.json has ${targets.length} targets, the test knows ${ids.length}`, targets.join(', '))
    expect(/npm run build/.test(e.message) && /Rust/.test(e.message), 'does not say how to build from source', e.message)
    expect(/NAPI_RS_NATIVE_LIBRARY_PATH/.test(e.message), 'does not say how to use a self-built addon', e.message)
  })
}

// A supported platform whose package is not installed: this OS with the other CPU.
const hostLibc = process.platform === 'linux' ? (process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl') : null
const otherArch = process.arch === 'x64' ? 'arm64' : 'x64'
const missingId = [process.platform, otherArch, hostLibc ?? (process.platform === 'win32' ? 'msvc' : null)].filter(Boolean).join('-')
if (ids.includes(missingId)) {
  check(`supported platform whose optional package is missing (${missingId} here): says so, names the package`, () => {
    const e = loadOn(process.platform, otherArch, 'binding.js')
    expect(e.code === 'TRYPEMA_NATIVE_LOAD_FAILED', `code is ${e.code}`, e.message)
    expect(e.message.includes(`${manifest.name}-${missingId}@${manifest.version}`), 'does not name the platform package', e.message)
    expect(/not installed/.test(e.message) && /--omit=optional/.test(e.message), 'does not explain the missing optional dependency', e.message)
  })
} else {
  console.log(`skip no supported ${missingId} target to fake on this machine`)
}

if (process.platform === 'linux') {
  check('the musl/glibc of the machine is named on Linux', () => {
    const e = loadOn('linux', 'riscv64', 'binding.js')
    const header = process.report.getReport().header
    const libc = header.glibcVersionRuntime ? `glibc ${header.glibcVersionRuntime}` : 'musl'
    expect(e.message.includes(`linux riscv64 (${libc})`), `does not name "${libc}"`, e.message)
  })
}

// index.js: once it wraps require('./binding.js') with explainLoadFailure, the user sees it.
const indexSource = readFileSync(join(packageDir, 'index.js'), 'utf8')
if (indexSource.includes('explainLoadFailure')) {
  check("require('trypema') on an unsupported platform throws the explained error", () => {
    const e = loadOn('freebsd', 'riscv64', 'index.js')
    expect(e.code === 'TRYPEMA_UNSUPPORTED_PLATFORM', `code is ${e.code}`, e.message)
    expect(e.message.includes('freebsd riscv64'), 'does not name the platform', e.message)
  })
} else {
  console.log('skip index.js does not call explainLoadFailure yet')
}

rmSync(work, { recursive: true, force: true })
const passed = results.filter(Boolean).length
const failed = results.length - passed
console.log(`${passed} passed, ${failed} failed`)
process.exitCode = failed === 0 ? 0 : 1
