'use strict'

// Turns a failure to load the native addon into a message a user can act on: which platform
// this is, which platforms have a prebuilt addon (package.json napi.targets), and what to do —
// reinstall the optional dependency, or build the addon from source with a Rust toolchain.
// Used around `require('./binding.js')`; nothing here runs unless that fails.

const { readFileSync } = require('node:fs')
const { name: PACKAGE_NAME, version: VERSION, napi, repository } = require('./package.json')

/** The oldest glibc the linux-gnu binaries load on (they are linked against its symbols). */
const GLIBC_FLOOR = '2.17'

const ARCH = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm', riscv64gc: 'riscv64', powerpc64le: 'ppc64', s390x: 's390x' }

/** `x86_64-unknown-linux-gnu` -> { platform: 'linux', arch: 'x64', abi: 'gnu', id: 'linux-x64-gnu' }. */
function parseTarget(triple) {
  const [cpu, , ...rest] = triple.split('-')
  const system = rest.join('-') || triple.split('-')[1]
  const arch = ARCH[cpu] ?? cpu
  let platform = system
  let abi = null
  if (system.startsWith('linux')) {
    platform = 'linux'
    abi = system.split('-')[1]?.replace(/eabihf$/, '') ?? null
  } else if (system === 'darwin') platform = 'darwin'
  else if (system.startsWith('windows')) {
    platform = 'win32'
    abi = system.split('-')[1] ?? null
  } else if (system === 'freebsd') platform = 'freebsd'
  return { triple, platform, arch, abi, id: [platform, arch, abi].filter(Boolean).join('-') }
}

function describeTarget({ platform, arch, abi }) {
  const os = { linux: 'Linux', darwin: 'macOS', win32: 'Windows', freebsd: 'FreeBSD' }[platform] ?? platform
  const libc = abi === 'gnu' ? ` glibc >= ${GLIBC_FLOOR}` : abi === 'musl' ? ' musl (Alpine)' : ''
  return `${os} ${arch}${libc}`
}

/** The targets a prebuilt addon is published for. */
function supportedTargets() {
  return (napi?.targets ?? []).map(parseTarget)
}

/** 'glibc 2.36', 'musl', or null off Linux / when it cannot be told. */
function detectLibc() {
  if (process.platform !== 'linux') return null
  try {
    const report = process.report?.getReport?.()
    if (report?.header?.glibcVersionRuntime) return `glibc ${report.header.glibcVersionRuntime}`
    if (report?.sharedObjects?.some((file) => /libc\.musl-|ld-musl-/.test(file))) return 'musl'
  } catch {}
  try {
    if (readFileSync('/usr/bin/ldd', 'latin1').includes('musl')) return 'musl'
  } catch {}
  return null
}

/** This process's platform in the naming of the platform packages, e.g. linux-x64-gnu. */
function currentTarget() {
  const libc = detectLibc()
  const abi = process.platform === 'linux' ? (libc?.startsWith('glibc') ? 'gnu' : libc === 'musl' ? 'musl' : null) : process.platform === 'win32' ? 'msvc' : null
  const id = [process.platform, process.arch, abi].filter(Boolean).join('-')
  return { platform: process.platform, arch: process.arch, abi, libc, id }
}

/** The messages of an error and of its `cause` chain (binding.js chains one per load attempt). */
function causes(error) {
  const messages = []
  const seen = new Set()
  for (let e = error; e != null && !seen.has(e) && messages.length < 8; e = e.cause) {
    seen.add(e)
    const message = String(e?.message ?? e).split('\n')[0]
    // The loader also probes for a WASI build, which this package does not publish.
    if (!/^Cannot find native binding|wasm32-wasi|\.wasi\.cjs/.test(message)) messages.push(message)
  }
  return messages
}

function installedPackage(id) {
  try {
    return require.resolve(`${PACKAGE_NAME}-${id}/package.json`)
  } catch {
    return null
  }
}

const SOURCE = repository?.url?.replace(/^git\+/, '').replace(/\.git$/, '') ?? `the ${PACKAGE_NAME} repository`

function buildFromSource(here) {
  return [
    'To build the addon from source instead, with a Rust toolchain (https://rustup.rs) and Node.js:',
    `  git clone ${SOURCE} && cd ${SOURCE.split('/').pop()} && npm ci && npm run build`,
    `then set NAPI_RS_NATIVE_LIBRARY_PATH to the trypema.${here.id}.node file it writes`,
    `(or copy that file next to ${PACKAGE_NAME}'s binding.js).`,
  ]
}

/**
 * An Error explaining why the native addon did not load, for the `require('./binding.js')`
 * failure `error` (kept as `cause`). `code` is TRYPEMA_UNSUPPORTED_PLATFORM when no prebuilt
 * addon exists for this platform, TRYPEMA_NATIVE_LOAD_FAILED when one exists but did not load.
 */
function explainLoadFailure(error) {
  const here = currentTarget()
  const supported = supportedTargets()
  const match = supported.find((target) => target.id === here.id)
  const where = `${here.platform} ${here.arch}${here.libc ? ` (${here.libc})` : ''}, Node.js ${process.version}`
  const list = supported.map((t) => `  ${t.id.padEnd(18)} ${describeTarget(t)}`)
  const details = causes(error)
  const lines = []
  let code
  if (match === undefined) {
    code = 'TRYPEMA_UNSUPPORTED_PLATFORM'
    lines.push(
      `${PACKAGE_NAME}: no prebuilt native addon for this platform: ${where}.`,
      `Prebuilt addons are published for:`,
      ...list,
      ...buildFromSource(here),
    )
  } else {
    code = 'TRYPEMA_NATIVE_LOAD_FAILED'
    const pkg = `${PACKAGE_NAME}-${here.id}`
    const installed = installedPackage(here.id)
    lines.push(`${PACKAGE_NAME}: the prebuilt native addon for ${here.id} did not load (${where}).`)
    if (installed === null) {
      lines.push(
        `This platform is supported: its addon is the optional dependency ${pkg}@${VERSION}, which is not installed.`,
        '- Install without --omit=optional / --no-optional, and run npm install on this machine itself:',
        '  node_modules copied from another OS, CPU or libc (e.g. glibc <-> Alpine musl) lack it.',
        '- If it still is missing, remove node_modules and package-lock.json and run npm install again',
        '  (npm can skip optional dependencies of another platform recorded in a lockfile: npm/cli#4828).',
      )
    } else {
      lines.push(`This platform is supported and ${pkg} is installed (${installed.replace(/package\.json$/, '')}), but its addon failed to load.`)
      if (details.some((m) => /GLIBC_[0-9.]+' not found|version `GLIBC/.test(m))) {
        lines.push(`Its glibc build needs glibc ${GLIBC_FLOOR} or later.`)
      }
      lines.push(`Reinstall it (npm install ${pkg}@${VERSION}) if the file is damaged.`)
    }
    lines.push(`Prebuilt addons: ${supported.map((t) => t.id).join(', ')}.`, ...buildFromSource(here))
  }
  if (details.length > 0) lines.push('Load errors:', ...details.map((m) => `  ${m}`))
  const explained = new Error(lines.join('\n'))
  explained.code = code
  explained.cause = error
  return explained
}

module.exports = { explainLoadFailure, supportedTargets, currentTarget, GLIBC_FLOOR }
