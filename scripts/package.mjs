// `npm run package`: builds the addon for this machine the way a release builds it and writes to
// dist/ the two tarballs a release would publish for it:
//
//   dist/trypema-<version>.tgz                  the main package; its package.json carries
//                                               `optionalDependencies` on every platform package
//                                               (package.json napi.targets) at the same version,
//                                               as `napi prepublish` writes it before publishing
//   dist/trypema-<platform>-<version>.tgz       npm/<platform>/ with the addon in it
//
// Linux glibc builds go through cargo-zigbuild with a versioned target
// (x86_64-unknown-linux-gnu.2.17), so the addon loads on glibc 2.17 and later; the check in
// scripts/check-glibc.mjs fails the packaging if it needs anything newer than 2.28. The release
// profile is the workspace's (Cargo.toml: lto, codegen-units = 1), and symbols are stripped.
// What the build needs and lacks is installed first: zig (PyPI `ziglang`) and cargo-zigbuild
// (`cargo install --locked`). It builds in <CARGO_TARGET_DIR or target>/package.
//
// napi's own `napi artifacts` / `napi prepublish` need the binaries of every target at once,
// which only the release workflow has (.github/workflows/release.yml), so the last step is done
// here the same way for the one binary this machine builds: the platform package gets the
// binary and the main package's version, the main package gets `optionalDependencies`.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { checkGlibc, GLIBC_CEILING, hasSymbolTable } from './check-glibc.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const dist = join(root, 'dist')
/** The oldest glibc the linux-gnu binaries are linked against (zig ships the stubs). */
export const GLIBC_FLOOR = '2.17'
/** zig for cargo-zigbuild, pinned: cargo-zigbuild 0.24 knows zig up to 0.16. */
const ZIGLANG = 'ziglang==0.15.2'
/** Installed with `cargo install --locked` when `cargo zigbuild` is missing. */
const CARGO_ZIGBUILD = '0.24.1'

const started = Date.now()
const seconds = (since) => ((Date.now() - since) / 1000).toFixed(1)

function run(command, args, options = {}) {
  console.log(`$ ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', ...options })
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.error?.message ?? result.signal ?? `exit ${result.status}`})`)
  }
  return result
}

function succeeds(command, args) {
  return spawnSync(command, args, { stdio: 'ignore' }).status === 0
}

function output(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: root, encoding: 'utf8', ...options })
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr || result.error?.message}`)
  }
  return result.stdout
}

// ---------------------------------------------------------------------------------------------
// The host's release target.

function hostLibc() {
  if (process.platform !== 'linux') return null
  const header = process.report?.getReport?.().header
  return header?.glibcVersionRuntime ? 'gnu' : 'musl'
}

function hostTriple(targets) {
  const arch = { x64: 'x86_64', arm64: 'aarch64' }[process.arch]
  const triple = {
    linux: `${arch}-unknown-linux-${hostLibc()}`,
    darwin: `${arch}-apple-darwin`,
    win32: `${arch}-pc-windows-msvc`,
  }[process.platform]
  if (arch === undefined || !targets.includes(triple)) {
    throw new Error(
      `this machine (${process.platform} ${process.arch}) is not one of package.json's napi.targets: ${targets.join(', ')}`,
    )
  }
  return triple
}

// ---------------------------------------------------------------------------------------------
// Tools for the glibc-floor build: zig and cargo-zigbuild.

function python() {
  for (const candidate of [process.env.CARGO_ZIGBUILD_PYTHON_PATH, 'python3', 'python']) {
    if (candidate && succeeds(candidate, ['--version'])) return candidate
  }
  return null
}

function ensureZig() {
  const py = python()
  if (py && succeeds(py, ['-m', 'ziglang', 'version'])) return
  if (succeeds(process.env.CARGO_ZIGBUILD_ZIG_PATH ?? 'zig', ['version'])) return
  if (py === null) {
    throw new Error('zig is needed for the glibc-floor build: install Python 3 (then `pip install ziglang`) or zig')
  }
  if (!succeeds(py, ['-m', 'pip', '--version'])) {
    if (process.getuid?.() === 0 && succeeds('apt-get', ['--version'])) {
      run('apt-get', ['install', '-y', '-qq', 'python3-pip'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
    } else {
      throw new Error(`zig is needed for the glibc-floor build: \`${py} -m pip install ${ZIGLANG}\` (pip is missing)`)
    }
  }
  const install = ['-m', 'pip', 'install', '--disable-pip-version-check', '-q', ZIGLANG]
  const first = spawnSync(py, install, { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' })
  if (first.status !== 0) {
    // A distribution's own Python refuses (PEP 668): a user install is what we want anyway.
    if (!/externally-managed/.test(first.stderr ?? '')) process.stderr.write(first.stderr ?? '')
    run(py, [...install, '--user', '--break-system-packages'])
  }
  if (!succeeds(py, ['-m', 'ziglang', 'version'])) throw new Error(`\`${py} -m ziglang version\` fails after installing ${ZIGLANG}`)
}

function ensureCargoZigbuild() {
  if (succeeds('cargo', ['zigbuild', '--version'])) return
  run('cargo', ['install', '--locked', `cargo-zigbuild@${CARGO_ZIGBUILD}`])
}

// ---------------------------------------------------------------------------------------------
// Packing.

function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'))
}

function writeJson(path, value) {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`)
}

/** `npm pack` into dist/; returns the tarball's file name and its file list. */
function pack(directory) {
  const json = output('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dist], { cwd: directory })
  const [info] = JSON.parse(json)
  return info
}

/** The files `npm pack` would put in the package at `directory`. */
function packList(directory) {
  const json = output('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: directory })
  return JSON.parse(json)[0].files.map((file) => file.path)
}

/**
 * Every relative `require` / `import` in the shipped JavaScript and typings must name a shipped
 * file: a module added to the sources but not to package.json `files` breaks the installed
 * package while every test run from the repository still passes.
 */
function checkPackClosure(files) {
  const shipped = new Set(files)
  const problems = []
  const pattern = /(?:require|import)\(\s*['"](\.{1,2}\/[^'"]*)['"]\s*\)|(?:from|import)\s+['"](\.{1,2}\/[^'"]*)['"]|<reference\s+path=['"]([^'"]+)['"]/g
  for (const file of files) {
    // binding.js (generated) probes for optional local builds in try/catch: not a dependency.
    if (file === 'binding.js' || !/\.(c|m)?js$|\.d\.(c|m)?ts$/.test(file)) continue
    const source = readFileSync(join(root, file), 'utf8')
    for (const match of source.matchAll(pattern)) {
      const spec = match[1] ?? match[2] ?? match[3]
      const base = join(dirname(file), spec).replaceAll('\\', '/')
      const stem = base.replace(/\.(c|m)?js$/, '')
      const candidates = [base, `${base}.js`, `${base}.json`, `${base}/index.js`, `${stem}.d.ts`, `${base}.d.ts`, `${base}/index.d.ts`]
      if (!candidates.some((candidate) => shipped.has(candidate))) problems.push(`${file} loads ${spec}`)
    }
  }
  if (problems.length > 0) {
    throw new Error(`the package would ship files that load files it does not ship (add them to package.json "files"):\n  ${problems.join('\n  ')}`)
  }
}

function sameFile(a, b) {
  return existsSync(a) && existsSync(b) && readFileSync(a).equals(readFileSync(b))
}

/** Every `<binaryName>.<platform>.node` under `dir`, by file name. */
function findBinaries(dir, found = new Map()) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) findBinaries(path, found)
    else if (entry.name.endsWith('.node')) {
      if (found.has(entry.name)) throw new Error(`${entry.name} is in ${dir} twice: ${found.get(entry.name)} and ${path}`)
      found.set(entry.name, path)
    }
  }
  return found
}

function parseArgs(argv) {
  const options = { artifacts: null }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--artifacts') options.artifacts = resolve(argv[++i] ?? '.')
    else throw new Error(`unknown argument ${argv[i]} (usage: npm run package [-- --artifacts dir])`)
  }
  return options
}

/** Builds this machine's addon as the release workflow does; returns its path. */
function buildHost(config, target, buildDir) {
  const buildStarted = Date.now()
  const binary = `${config.binaryName}.${target.platformArchABI}.node`
  // A target directory of its own: `npm run build` builds the same triple with other flags
  // (no zig, no strip), and sharing one would rebuild everything at each switch.
  const targetDir = join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'package')
  const napiArgs = ['build', '--platform', '--release', '--target-dir', targetDir, '--output-dir', buildDir, '--js', 'binding.js', '--dts', 'binding.d.ts']
  if (target.platform === 'linux') {
    // zig links against the oldest glibc we promise (and musl for the musl targets).
    ensureZig()
    ensureCargoZigbuild()
    napiArgs.push('--strip', '--cross-compile', '--target', target.abi === 'gnu' ? `${target.triple}.${GLIBC_FLOOR}` : target.triple)
  } else {
    napiArgs.push('--target', target.triple)
  }
  run(process.execPath, [join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js'), ...napiArgs])
  const built = join(buildDir, binary)
  if (!existsSync(built)) throw new Error(`napi build wrote no ${binary}`)
  console.log(`built ${binary} (${(statSync(built).size / 1024).toFixed(0)} KiB) in ${seconds(buildStarted)} s`)

  // The published loader is the committed binding.js: it must be what this build generates,
  // or the package would load an addon whose exports it does not know.
  if (!sameFile(join(buildDir, 'binding.js'), join(root, 'binding.js'))) {
    throw new Error('binding.js is not what `napi build` generates from the current sources: run `npm run build` and commit binding.js')
  }
  if (!sameFile(join(buildDir, 'binding.d.ts'), join(root, 'binding.d.ts'))) {
    console.warn('note: binding.d.ts differs from what `napi build` generates now (it is not published; `npm run build` refreshes it)')
  }
  return built
}

/** Stripped, and loadable on old glibc: what a release promises of a Linux binary. */
function checkBinary(target, path) {
  if (target.platform !== 'linux') return
  const name = path.split(/[\\/]/).pop()
  if (hasSymbolTable(path)) throw new Error(`${name} still has a symbol table (.symtab): it was not stripped`)
  if (target.abi === 'gnu') {
    const needs = checkGlibc(path, { ceiling: GLIBC_CEILING })
    console.log(`${name}: needs glibc ${needs.maxGlibc} at most (ceiling ${GLIBC_CEILING}); links ${needs.needed.join(', ')}`)
  }
}

async function main() {
  const options = parseArgs(process.argv.slice(2))
  const manifest = readJson(join(root, 'package.json'))
  const { parseTriple, readNapiConfig } = await import('@napi-rs/cli')
  const config = await readNapiConfig(join(root, 'package.json'))
  const targets = config.targets.map((target) => target.triple)

  // Every platform package must exist before anything is built, with the LICENSE it lists.
  for (const t of config.targets) {
    const dir = join(root, 'npm', t.platformArchABI)
    const pkg = readJson(join(dir, 'package.json'))
    if (pkg.name !== `${config.packageName}-${t.platformArchABI}`) {
      throw new Error(`npm/${t.platformArchABI}/package.json is named ${pkg.name}; run \`npx napi create-npm-dirs\``)
    }
    for (const file of pkg.files ?? []) {
      if (file === `${config.binaryName}.${t.platformArchABI}.node`) continue
      if (!existsSync(join(dir, file))) throw new Error(`npm/${t.platformArchABI}/ lacks ${file}, which its package.json lists`)
    }
    if (existsSync(join(dir, 'LICENSE')) && !sameFile(join(dir, 'LICENSE'), join(root, 'LICENSE'))) {
      throw new Error(`npm/${t.platformArchABI}/LICENSE differs from LICENSE: copy it again`)
    }
  }

  const stage = mkdtempSync(join(tmpdir(), 'trypema-package-'))
  try {
    // 1. The binaries: this machine's, built now, or every target's from the release workflow.
    const binaries = new Map() // target -> path
    if (options.artifacts === null) {
      const target = parseTriple(hostTriple(targets))
      const buildDir = join(stage, 'build')
      mkdirSync(buildDir)
      binaries.set(target, buildHost(config, target, buildDir))
    } else {
      const found = findBinaries(options.artifacts)
      const missing = []
      for (const target of config.targets) {
        const path = found.get(`${config.binaryName}.${target.platformArchABI}.node`)
        if (path === undefined) missing.push(target.triple)
        else binaries.set(target, path)
      }
      if (missing.length > 0) throw new Error(`${options.artifacts} lacks the binaries of ${missing.join(', ')}`)
    }

    // 2. Check them.
    for (const [target, path] of binaries) checkBinary(target, path)

    // 3. Stage and pack the packages, as `napi artifacts` + `napi prepublish` leave them.
    rmSync(dist, { recursive: true, force: true })
    mkdirSync(dist)
    const packed = []

    const mainStage = join(stage, 'main')
    const mainFiles = packList(root)
    checkPackClosure(mainFiles)
    for (const file of mainFiles) {
      mkdirSync(dirname(join(mainStage, file)), { recursive: true })
      copyFileSync(join(root, file), join(mainStage, file))
    }
    const optionalDependencies = { ...manifest.optionalDependencies }
    for (const t of config.targets) optionalDependencies[`${config.packageName}-${t.platformArchABI}`] = manifest.version
    writeJson(join(mainStage, 'package.json'), { ...manifest, optionalDependencies })
    packed.push(pack(mainStage))

    for (const [target, path] of binaries) {
      const platformDir = join(root, 'npm', target.platformArchABI)
      const platformStage = join(stage, 'npm', target.platformArchABI)
      mkdirSync(platformStage, { recursive: true })
      for (const name of readdirSync(platformDir)) {
        if (name.endsWith('.node')) continue // a stale local copy; the fresh binary goes in below
        copyFileSync(join(platformDir, name), join(platformStage, name))
      }
      copyFileSync(path, join(platformStage, `${config.binaryName}.${target.platformArchABI}.node`))
      const platformManifest = readJson(join(platformStage, 'package.json'))
      platformManifest.version = manifest.version
      writeJson(join(platformStage, 'package.json'), platformManifest)
      packed.push(pack(platformStage))
    }

    for (const info of packed) {
      console.log(`\ndist/${info.filename}  ${(info.size / 1024).toFixed(1)} KiB packed, ${info.entryCount} files`)
      for (const file of info.files) console.log(`  ${String(file.size).padStart(9)}  ${file.path}`)
    }
    console.log(`\noptionalDependencies: ${Object.keys(optionalDependencies).join(', ')} @ ${manifest.version}`)
    console.log(`npm run package: done in ${seconds(started)} s`)
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error) => {
    console.error(`\nnpm run package failed: ${error.message}`)
    process.exitCode = 1
  })
}
