// Installs the tarballs `npm run package` wrote to dist/ the way a user installs the package —
// `npm install trypema` from a registry — into a fresh temporary project, on a PATH without
// cargo or rustc, and uses it: a CommonJS and an ESM consumer against a real redis-server,
// `trypema/express` over real HTTP, and `tsc --strict --noEmit` on a TypeScript consumer using the
// installed typings.
//
// The registry is a small one on loopback that serves dist/'s tarballs and, for every platform
// package the main package names in `optionalDependencies` but dist/ lacks, a manifest whose
// tarball does not exist: npm must pick the host's package by os / cpu / libc and never ask
// for another one's tarball. Nothing is fetched from the internet; express and the typings the
// TypeScript check needs are copied from this repository's node_modules.
//
//   node scripts/install-test.mjs [--dist dir] [--no-redis] [--redis-url url] [--keep]
//
// Without --redis-url it starts a private redis-server (scripts/redis-server.mjs), so the
// Express consumer's key (the client address) starts empty; --no-redis
// runs the consumers on the local provider only (for machines without Redis, e.g. Windows).
// Prints one line per check and `N passed, N failed`; exits 1 on a failure.
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { once } from 'node:events'
import http from 'node:http'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gunzipSync } from 'node:zlib'
import { redisServerInstalled, startRedis } from './redis-server.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const require = createRequire(import.meta.url)
const windows = process.platform === 'win32'

// ---------------------------------------------------------------------------------------------
// Reporting.

const results = []
export async function check(name, fn) {
  const started = Date.now()
  try {
    const note = await fn()
    results.push(true)
    console.log(`ok   ${name}${note ? ` (${note})` : ''} [${Date.now() - started} ms]`)
    return true
  } catch (error) {
    results.push(false)
    console.log(`FAIL ${name}\n     ${String(error?.stack ?? error).replaceAll('\n', '\n     ')}`)
    return false
  }
}
export function summary() {
  const passed = results.filter(Boolean).length
  const failed = results.length - passed
  console.log(`${passed} passed, ${failed} failed`)
  return failed
}
function assert(condition, message) {
  if (!condition) throw new Error(message)
}

// ---------------------------------------------------------------------------------------------
// Tarballs.

/** The files of a .tgz as { path: Buffer }; enough tar (ustar / pax names) for npm's tarballs. */
export function readTarball(file) {
  const data = gunzipSync(readFileSync(file))
  const files = {}
  let longName = null
  for (let at = 0; at + 512 <= data.length; ) {
    const header = data.subarray(at, at + 512)
    if (header.every((byte) => byte === 0)) break
    const text = (from, length) => header.toString('utf8', from, from + length).replace(/\0.*$/s, '')
    const size = parseInt(text(124, 12).trim() || '0', 8)
    const type = String.fromCharCode(header[156] || 48)
    const body = data.subarray(at + 512, at + 512 + size)
    let name = text(345, 155) ? `${text(345, 155)}/${text(0, 100)}` : text(0, 100)
    if (type === 'x') {
      const path = /\d+ path=([^\n]*)\n/.exec(body.toString('utf8'))
      longName = path ? path[1] : null
    } else if (type === 'L') {
      longName = body.toString('utf8').replace(/\0.*$/s, '')
    } else {
      if (longName !== null) name = longName
      longName = null
      if (type === '0' || type === '\0') files[name] = body
    }
    at += 512 + Math.ceil(size / 512) * 512
  }
  return files
}

function manifestOf(file) {
  const json = readTarball(file)['package/package.json']
  assert(json, `${file} has no package/package.json`)
  return JSON.parse(json.toString('utf8'))
}

/** This machine's platform package suffix, as napi names them (linux-x64-gnu, darwin-arm64, ...). */
export function hostPlatformId() {
  const { currentTarget } = require(join(root, 'platform.js'))
  return currentTarget().id
}

/** dist/'s main tarball and this machine's platform tarball. */
export function findTarballs(dist) {
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const main = join(dist, `${manifest.name}-${manifest.version}.tgz`)
  const platform = join(dist, `${manifest.name}-${hostPlatformId()}-${manifest.version}.tgz`)
  for (const file of [main, platform]) {
    assert(existsSync(file), `${file} is missing: run \`npm run package\` first`)
  }
  return { main, platform, name: manifest.name, version: manifest.version }
}

// ---------------------------------------------------------------------------------------------
// A registry on loopback.

/**
 * Serves packuments and tarballs. `packages` maps a name to { manifest, tarball?: Buffer }; a
 * package without a tarball is listed but its tarball URL answers 404 (and is recorded).
 */
export async function startRegistry(packages) {
  const requests = []
  const server = http.createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://registry').pathname).replace(/^\/+/, '')
    requests.push(path)
    const tarball = /^(.+)\/-\/([^/]+\.tgz)$/.exec(path)
    const entry = packages.get(tarball ? tarball[1] : path)
    if (tarball && entry?.tarball && tarball[2] === entry.file) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': entry.tarball.length })
      return res.end(entry.tarball)
    }
    if (!tarball && entry) {
      const body = JSON.stringify(packument(entry, `http://127.0.0.1:${server.address().port}`))
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' })
      return res.end(body)
    }
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end('{"error":"Not found"}')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    requests,
    close: () => new Promise((done) => server.close(done)),
  }
}

function packument({ manifest, tarball, file }, base) {
  const content = tarball ?? Buffer.from('not published here')
  const version = {
    ...manifest,
    _id: `${manifest.name}@${manifest.version}`,
    dist: {
      tarball: `${base}/${manifest.name}/-/${file}`,
      shasum: createHash('sha1').update(content).digest('hex'),
      integrity: `sha512-${createHash('sha512').update(content).digest('base64')}`,
    },
  }
  return { name: manifest.name, 'dist-tags': { latest: manifest.version }, versions: { [manifest.version]: version } }
}

/** What the registry holds: dist's tarballs plus manifests of the platform packages it lacks. */
export function registryPackages(tarballs) {
  const packages = new Map()
  for (const path of tarballs) {
    const manifest = manifestOf(path)
    packages.set(manifest.name, { manifest, tarball: readFileSync(path), file: path.split(/[\\/]/).pop() })
  }
  const main = [...packages.values()].find((p) => p.manifest.optionalDependencies)
  for (const [name, version] of Object.entries(main?.manifest.optionalDependencies ?? {})) {
    if (packages.has(name)) continue
    const dir = join(root, 'npm', name.slice(main.manifest.name.length + 1))
    const manifest = { ...JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')), version }
    packages.set(name, { manifest, tarball: null, file: `${name}-${version}.tgz` })
  }
  return packages
}

// ---------------------------------------------------------------------------------------------
// npm, with nothing of this machine's set-up.

function npmCli() {
  const candidates = [
    process.env.npm_execpath,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'),
    join(dirname(process.execPath), 'node_modules', 'npm', 'bin', 'npm-cli.js'),
  ]
  const which = spawnSync(windows ? 'where' : 'which', ['npm'], { encoding: 'utf8' })
  if (which.status === 0) {
    const found = realpathSync(which.stdout.split(/\r?\n/)[0])
    candidates.push(found, join(dirname(found), 'npm-cli.js'), join(dirname(found), 'node_modules', 'npm', 'bin', 'npm-cli.js'))
  }
  const cli = candidates.find((path) => path && /npm-cli\.js$/.test(path) && existsSync(path))
  assert(cli, 'cannot find npm-cli.js next to this node')
  return cli
}

/**
 * The environment the installs and consumers run in: PATH holds only the system directories and
 * a directory with `node` (no cargo, rustc or compiler toolchain of the user's), npm reads no
 * user config, and nothing of an enclosing `npm run` leaks in.
 */
export function isolatedEnv(work, node = process.execPath) {
  const bin = join(work, 'bin')
  mkdirSync(bin, { recursive: true })
  const env = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (/^npm_/i.test(key) || /^(PATH|NODE_OPTIONS|NODE_PATH|RUSTUP_HOME|CARGO_HOME|CARGO_TARGET_DIR)$/i.test(key)) continue
    env[key] = value
  }
  if (windows) {
    // Windows has no /usr/bin: keep the system's PATH but drop Rust's directories.
    env.Path = [dirname(node), ...(process.env.PATH ?? process.env.Path ?? '').split(delimiter).filter((p) => p && !/cargo|rustup/i.test(p))].join(delimiter)
  } else {
    const link = join(bin, 'node')
    rmSync(link, { force: true })
    symlinkSync(node, link)
    env.PATH = [bin, '/usr/bin', '/bin'].join(delimiter)
  }
  writeFileSync(join(work, 'user-npmrc'), '')
  writeFileSync(join(work, 'global-npmrc'), '')
  env.NPM_CONFIG_USERCONFIG = join(work, 'user-npmrc')
  env.NPM_CONFIG_GLOBALCONFIG = join(work, 'global-npmrc')
  env.NPM_CONFIG_UPDATE_NOTIFIER = 'false'
  env.NPM_CONFIG_FUND = 'false'
  env.NPM_CONFIG_AUDIT = 'false'
  env.NODE_PATH = ''
  return env
}

function run(command, args, options) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeout ?? 120_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolvePromise({ code, signal, stdout, stderr })
    })
  })
}

async function runOk(command, args, options) {
  const result = await run(command, args, options)
  if (result.code !== 0) {
    throw new Error(`${[command, ...args].join(' ')} exited ${result.code ?? result.signal}\n${result.stdout}\n${result.stderr}`)
  }
  return result
}

export async function npm(args, { cwd, env }) {
  return runOk(process.execPath, [npmCli(), ...args], { cwd, env, timeout: 300_000 })
}

// ---------------------------------------------------------------------------------------------
// Express and the typings, from this repository's node_modules.

/** Copies `names` and everything they depend on from the repo's node_modules into `project`. */
export function copyFromRepo(project, names) {
  const copied = new Set()
  const queue = names.map((name) => join(root, 'node_modules', name))
  while (queue.length > 0) {
    const dir = queue.shift()
    if (copied.has(dir)) continue
    copied.add(dir)
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
    const deps = { ...manifest.dependencies, ...manifest.optionalDependencies, ...manifest.peerDependencies }
    for (const dep of Object.keys(deps)) {
      // Node's lookup: the nearest node_modules/<dep> from the package's directory upwards.
      let from = dir
      let found = null
      while (from.length >= root.length - 1) {
        const candidate = join(from, 'node_modules', dep)
        if (existsSync(join(candidate, 'package.json'))) {
          found = candidate
          break
        }
        from = dirname(from)
      }
      if (found !== null) queue.push(found)
      else if (!manifest.optionalDependencies?.[dep] && !manifest.peerDependencies?.[dep]) {
        throw new Error(`${dep} (needed by ${manifest.name}) is not in ${root}node_modules: run npm ci`)
      }
    }
  }
  // Nested directories travel with their parent.
  const dirs = [...copied].sort()
  let count = 0
  for (const dir of dirs) {
    const rel = relative(root, dir)
    if (dirs.some((other) => other !== dir && dir.startsWith(other + sep) && !relative(other, dir).startsWith('..'))) continue
    cpSync(dir, join(project, rel), { recursive: true, dereference: false })
    count += 1
  }
  return copied.size
}

// ---------------------------------------------------------------------------------------------
// The consumers.

const CJS_CONSUMER = String.raw`'use strict'
// CommonJS: require('trypema'), the redis provider against a real redis-server, the local one.
const assert = require('node:assert/strict')
const { RateLimiter } = require('trypema')

async function main() {
  assert.ok(require.resolve('trypema').startsWith(process.cwd()), require.resolve('trypema'))
  const url = process.env.REDIS_URL
  const rl = await (url ? RateLimiter.builder(url) : RateLimiter.builder()).windowSizeSeconds(60).build()
  const key = 'cjs_' + process.pid + '_' + Date.now()
  if (url) {
    // Capacity floor(60 s x 1/s) = 60: 59 + 1 fit, one more does not.
    assert.deepEqual(await rl.redis.absolute.inc(key, 1, 59), { kind: 'allowed' })
    assert.deepEqual(await rl.redis.absolute.inc(key, 1, 1), { kind: 'allowed' })
    const rejected = await rl.redis.absolute.inc(key, 1, 1)
    assert.equal(rejected.kind, 'rejected')
    assert.ok(rejected.retryAfterMs > 0 && rejected.retryAfterMs <= 60_000, JSON.stringify(rejected))
  }
  const local = rl.local.absolute.inc(key, 1)
  assert.equal(typeof local.then, 'undefined', 'local calls are synchronous')
  assert.equal(local.kind, 'allowed')
  for (let i = 1; i < 60; i++) assert.equal(rl.local.absolute.inc(key, 1).kind, 'allowed')
  assert.equal(rl.local.absolute.inc(key, 1).kind, 'rejected')
  await rl.close()
  const addon = process.report.getReport().sharedObjects.find((file) => /trypema[.][^\\/]*[.]node$/.test(file))
  console.log(JSON.stringify({ addon, node: process.version }))
}
main().catch((error) => {
  console.error(error)
  process.exit(1)
})
`

const ESM_CONSUMER = String.raw`// ESM: named and default imports of 'trypema' and 'trypema/express'.
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import trypema, { RateLimiter } from 'trypema'
import { rateLimit } from 'trypema/express'

assert.equal(trypema.RateLimiter, RateLimiter, 'the ESM entry re-exports the CommonJS classes')
assert.equal(createRequire(import.meta.url)('trypema').RateLimiter, RateLimiter)
assert.equal(typeof rateLimit, 'function')
const url = process.env.REDIS_URL
const rl = await (url ? RateLimiter.builder(url) : RateLimiter.builder()).windowSizeSeconds(60).build()
const key = 'esm_' + process.pid + '_' + Date.now()
if (url) {
  const decisions = []
  for (let i = 0; i < 3; i++) decisions.push((await rl.redis.absolute.inc(key, 0.05, 1)).kind) // capacity 3
  decisions.push((await rl.redis.absolute.inc(key, 0.05, 1)).kind)
  assert.deepEqual(decisions, ['allowed', 'allowed', 'allowed', 'rejected'])
}
assert.equal(rl.local.absolute.inc(key, 0.05).kind, 'allowed')
await rl.close()
console.log(JSON.stringify({ ok: true, node: process.version }))
`

const EXPRESS_CONSUMER = String.raw`'use strict'
// trypema/express in an Express app over real HTTP: the 6th request in the window is a 429.
const assert = require('node:assert/strict')
const { once } = require('node:events')
const express = require('express')
const { RateLimiter } = require('trypema')
const { rateLimit } = require('trypema/express')

async function main() {
  assert.ok(require.resolve('express').startsWith(process.cwd()), require.resolve('express'))
  const url = process.env.REDIS_URL
  const limiter = await (url ? RateLimiter.builder(url) : RateLimiter.builder()).windowSizeSeconds(10).build()
  const app = express()
  if (url) app.use('/redis', rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.5 }))
  app.use('/local', rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 0.5 }))
  app.get(['/redis/hello', '/local/hello'], (req, res) => res.json({ hello: 'world' }))
  const server = app.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const base = 'http://127.0.0.1:' + server.address().port
  const report = {}
  for (const route of url ? ['/redis/hello', '/local/hello'] : ['/local/hello']) {
    const statuses = []
    let last
    for (let i = 0; i < 6; i++) {
      last = await fetch(base + route)
      statuses.push(last.status)
      await last.text()
    }
    // 10 s x 0.5/s = capacity 5.
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429], route + ': ' + statuses)
    const retryAfter = Number(last.headers.get('retry-after'))
    assert.ok(retryAfter >= 1 && retryAfter <= 10, 'Retry-After ' + last.headers.get('retry-after'))
    report[route] = statuses
  }
  server.closeAllConnections()
  server.close()
  await limiter.close()
  console.log(JSON.stringify(report))
}
main().catch((error) => {
  console.error(error)
  process.exit(1)
})
`

const TS_CONSUMER = String.raw`// Type-checked only (tsc --strict --noEmit) against the installed typings.
import { RateLimiter, type RateLimitDecision } from 'trypema'
import { rateLimit } from 'trypema/express'
import type { RequestHandler } from 'express'

export async function handler(ip: string): Promise<string> {
  const rl = await RateLimiter.builder('redis://127.0.0.1:6379/').windowSizeSeconds(60).build()
  const d: RateLimitDecision = await rl.redis.absolute.inc(ip, 5, 1)
  let header = ''
  if (d.kind === 'rejected') header = String(Math.ceil(d.retryAfterMs / 1000))
  const local = rl.local.absolute.inc(ip, 5)
  if (local.kind === 'rejected') header = String(local.remainingAfterWaiting)
  // @ts-expect-error local calls are synchronous: a decision, not a Promise
  void local.then
  // @ts-expect-error keys are strings
  rl.local.absolute.inc(123, 5)
  const middleware: RequestHandler = rateLimit({ limiter: rl, provider: 'redis', strategy: 'absolute', rate: 5 })
  void middleware
  await rl.close()
  return header
}
`

const TS_ESM_CONSUMER = String.raw`// The same typings resolved through the "import" condition.
import { RateLimiter } from 'trypema'
import { rateLimit } from 'trypema/express'

const rl = await RateLimiter.builder().windowSizeSeconds(10).build()
const d = rl.local.absolute.inc('user_123', 5)
const kind: 'allowed' | 'rejected' | 'suppressed' = d.kind
// @ts-expect-error 'redis' needs a strategy
rateLimit({ limiter: rl, provider: 'redis', rate: 5 })
export { kind }
`

/** Writes the consumers into the project. */
export function writeConsumers(project) {
  writeFileSync(join(project, 'consumer.cjs'), CJS_CONSUMER)
  writeFileSync(join(project, 'consumer.mjs'), ESM_CONSUMER)
  writeFileSync(join(project, 'express-app.cjs'), EXPRESS_CONSUMER)
  writeFileSync(join(project, 'consumer.ts'), TS_CONSUMER)
  writeFileSync(join(project, 'consumer-esm.mts'), TS_ESM_CONSUMER)
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify(
      {
        compilerOptions: {
          target: 'es2022',
          lib: ['es2022'],
          module: 'node16',
          moduleResolution: 'node16',
          types: ['node'],
          strict: true,
          noEmit: true,
          skipLibCheck: false,
        },
        files: ['consumer.ts', 'consumer-esm.mts'],
      },
      null,
      2,
    ),
  )
}

/**
 * Runs the CommonJS, ESM and Express consumers with `node` (a path); `addonDir` is where the
 * addon must be loaded from. Each is one check.
 */
export async function runConsumers({ project, env, node = process.execPath, redisUrl, addonDir, label = '' }) {
  const childEnv = { ...env, REDIS_URL: redisUrl ?? '' }
  if (!windows) {
    rmSync(join(dirname(project), 'bin', 'node'), { force: true })
    symlinkSync(node, join(dirname(project), 'bin', 'node'))
  }
  const via = redisUrl ? 'redis + local' : 'local only'
  await check(`${label}CommonJS consumer: require('trypema'), ${via}, addon from the platform package`, async () => {
    const { stdout } = await runOk(node, ['consumer.cjs'], { cwd: project, env: childEnv, timeout: 60_000 })
    const { addon, node: version } = JSON.parse(stdout.trim().split('\n').pop())
    const canonical = (path) => (windows ? realpathSync(path).toLowerCase() : realpathSync(path))
    assert(addon && canonical(addon).startsWith(canonical(addonDir)), `the addon loaded from ${addon}, not from ${addonDir}`)
    return `${version}, ${relative(project, addon)}`
  })
  await check(`${label}ESM consumer: import trypema / trypema/express, ${via}`, async () => {
    const { stdout } = await runOk(node, ['consumer.mjs'], { cwd: project, env: childEnv, timeout: 60_000 })
    return JSON.parse(stdout.trim().split('\n').pop()).node
  })
  await check(`${label}trypema/express over HTTP: 5 x 200 then 429 with Retry-After (${via})`, async () => {
    const { stdout } = await runOk(node, ['express-app.cjs'], { cwd: project, env: childEnv, timeout: 60_000 })
    return stdout.trim().split('\n').pop()
  })
}

// ---------------------------------------------------------------------------------------------

/**
 * Sets up the temporary project: registry, `npm install trypema`, express and typings. Returns
 * what the checks need; call `cleanup()` at the end.
 */
export async function prepare({ dist = join(root, 'dist'), keep = false } = {}) {
  const tarballs = findTarballs(dist)
  const work = mkdtempSync(join(tmpdir(), 'trypema-install-'))
  const project = join(work, 'project')
  mkdirSync(project)
  const env = isolatedEnv(work)
  const registry = await startRegistry(registryPackages([tarballs.main, tarballs.platform]))
  const platformName = `${tarballs.name}-${hostPlatformId()}`
  const npmArgs = ['--registry', registry.url, '--cache', join(work, 'npm-cache'), '--no-audit', '--no-fund', '--loglevel', 'warn']
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'trypema-install-test', version: '1.0.0', private: true }, null, 2))
  return {
    tarballs,
    work,
    project,
    env,
    registry,
    platformName,
    npmArgs,
    addonDir: join(project, 'node_modules', platformName),
    async cleanup() {
      await registry.close()
      if (keep) console.log(`kept ${work}`)
      else rmSync(work, { recursive: true, force: true })
    },
  }
}

export async function installChecks(ctx) {
  const { tarballs, project, env, registry, platformName, npmArgs } = ctx

  await check('the reduced PATH has node and no cargo / rustc', async () => {
    if (windows) return 'skipped on Windows: only Rust directories are dropped'
    const node = spawnSync('node', ['--version'], { env, encoding: 'utf8' })
    assert(node.status === 0, `node is not reachable on ${env.PATH}`)
    for (const tool of ['cargo', 'rustc']) {
      const probe = spawnSync(tool, ['--version'], { env })
      assert(probe.error?.code === 'ENOENT', `${tool} is reachable on ${env.PATH}`)
    }
    return env.PATH
  })

  const installed = await check(`npm install ${tarballs.name}@${tarballs.version} from the registry picks ${platformName} only`, async () => {
    await npm(['install', `${tarballs.name}@${tarballs.version}`, ...npmArgs], { cwd: project, env })
    const modules = readdirSync(join(project, 'node_modules'))
    const platformDirs = modules.filter((name) => name.startsWith(`${tarballs.name}-`))
    assert(modules.includes(tarballs.name), 'trypema is not installed')
    assert(platformDirs.length === 1 && platformDirs[0] === platformName, `platform packages installed: ${platformDirs.join(', ') || 'none'}`)
    const foreign = registry.requests.filter((path) => /\.tgz$/.test(path) && !path.startsWith(`${tarballs.name}/`) && !path.startsWith(`${platformName}/`))
    assert(foreign.length === 0, `npm fetched other platforms' tarballs: ${foreign.join(', ')}`)
    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8'))
    const optional = Object.keys(lock.packages).filter((path) => path.startsWith(`node_modules/${tarballs.name}-`))
    return `lockfile records ${optional.length} platform packages; installed ${platformName}`
  })
  if (!installed) return false

  await check('the installed manifest lists every platform package in optionalDependencies at its version', async () => {
    const installed = JSON.parse(readFileSync(join(project, 'node_modules', tarballs.name, 'package.json'), 'utf8'))
    const targets = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).napi.targets
    const optional = installed.optionalDependencies ?? {}
    assert(Object.keys(optional).length === targets.length, `optionalDependencies: ${JSON.stringify(optional)}`)
    for (const [name, version] of Object.entries(optional)) {
      assert(version === installed.version, `${name}@${version} while the package is ${installed.version}`)
      assert(existsSync(join(root, 'npm', name.slice(tarballs.name.length + 1), 'package.json')), `${name} has no npm/ directory`)
    }
    return Object.keys(optional).join(', ')
  })

  await check('the packages ship LICENSE; only the platform package carries a .node file', async () => {
    const main = Object.keys(readTarball(tarballs.main))
    const platform = Object.keys(readTarball(tarballs.platform))
    assert(main.includes('package/LICENSE') && platform.includes('package/LICENSE'), 'LICENSE missing')
    assert(!main.some((file) => file.endsWith('.node')), `main package has ${main.filter((f) => f.endsWith('.node'))}`)
    assert(platform.filter((file) => file.endsWith('.node')).length === 1, `platform package: ${platform.join(', ')}`)
    return `main: ${main.length} files, platform: ${platform.length} files`
  })

  await check('the packed README links only to packed files or absolute URLs', async () => {
    const files = readTarball(tarballs.main)
    const readme = files['package/README.md']?.toString('utf8')
    assert(readme, 'README.md is not in the main package')
    const targets = [...readme.matchAll(/\]\(([^)\s]+)\)|<img[^>]*\ssrc="([^"]+)"/g)].map((m) => m[1] ?? m[2])
    const relative = targets.filter((target) => !/^(https?:|mailto:|#)/.test(target))
    const missing = relative.filter((target) => !(`package/${target.split('#')[0]}` in files))
    assert(missing.length === 0, `README links to files the package does not ship: ${missing.join(', ')}`)
    return `${targets.length} links, ${relative.length} relative`
  })

  await check('express and the typings for the TypeScript consumer are copied in (no registry)', async () => {
    const count = copyFromRepo(project, ['express', '@types/express', '@types/node'])
    writeConsumers(project)
    return `${count} packages`
  })
  return true
}

export async function typingsCheck({ project, env }) {
  await check('tsc --strict --noEmit on a TypeScript consumer of the installed typings', async () => {
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    assert(existsSync(tsc), 'typescript is not in node_modules: run npm ci')
    const result = await run(process.execPath, [tsc, '-p', 'tsconfig.json', '--strict', '--noEmit'], { cwd: project, env, timeout: 120_000 })
    assert(result.code === 0, `tsc exited ${result.code}\n${result.stdout}${result.stderr}`)
    return 'no errors'
  })
}

export async function missingPlatformCheck(ctx) {
  const { tarballs, work, env, npmArgs } = ctx
  await check('without the optional platform package, loading explains itself (TRYPEMA_NATIVE_LOAD_FAILED)', async () => {
    const bare = join(work, 'omit-optional')
    mkdirSync(bare)
    writeFileSync(join(bare, 'package.json'), JSON.stringify({ name: 'bare', version: '1.0.0', private: true }))
    await npm(['install', `${tarballs.name}@${tarballs.version}`, '--omit=optional', ...npmArgs], { cwd: bare, env })
    const script = `
      const dir = require('node:path').dirname(require.resolve('trypema/package.json'))
      let error
      try { require('trypema') } catch (e) { error = e }
      if (error && error.code === undefined) error = require(dir + '/platform.js').explainLoadFailure(error)
      console.log(JSON.stringify(error ? { code: error.code, message: error.message } : { loaded: true }))
    `
    const { stdout } = await runOk(process.execPath, ['-e', script], { cwd: bare, env })
    const result = JSON.parse(stdout.trim().split('\n').pop())
    assert(result.code === 'TRYPEMA_NATIVE_LOAD_FAILED', JSON.stringify(result))
    assert(result.message.includes(ctx.platformName), result.message)
    return result.message.split('\n')[1]
  })
  await check('platform-message-test against the installed package', async () => {
    const { stdout } = await runOk(process.execPath, [join(root, 'scripts', 'platform-message-test.mjs'), join(ctx.project, 'node_modules', tarballs.name)], {
      cwd: ctx.project,
      env,
      timeout: 120_000,
    })
    return stdout.trim().split('\n').pop()
  })
}

/** Starts what `--redis-url` / `--no-redis` ask for; returns { url, stop }. */
export async function redisFor(options) {
  if (options.noRedis) return { url: null, stop: async () => {} }
  if (options.redisUrl) return { url: options.redisUrl, stop: async () => {} }
  if (!redisServerInstalled()) throw new Error('redis-server is not installed (apt-get install redis-server), or pass --no-redis')
  const redis = await startRedis()
  return { url: redis.url, stop: redis.stop }
}

export function parseArgs(argv) {
  const options = { dist: join(root, 'dist'), noRedis: false, redisUrl: null, keep: false }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--dist') options.dist = resolve(argv[++i])
    else if (argv[i] === '--no-redis') options.noRedis = true
    else if (argv[i] === '--redis-url') options.redisUrl = argv[++i]
    else if (argv[i] === '--keep') options.keep = true
    else throw new Error(`unknown argument ${argv[i]}`)
  }
  return options
}

async function main() {
  const options = parseArgs(process.argv.slice(2))
  const started = Date.now()
  let ctx
  let redis
  try {
    ctx = await prepare(options)
    if (await installChecks(ctx)) {
      redis = await redisFor(options)
      await runConsumers({ project: ctx.project, env: ctx.env, redisUrl: redis.url, addonDir: ctx.addonDir })
      await typingsCheck(ctx)
      await missingPlatformCheck(ctx)
    }
  } catch (error) {
    await check('install test set-up', () => {
      throw error
    })
  } finally {
    await redis?.stop()
    await ctx?.cleanup()
  }
  console.log(`install test: ${((Date.now() - started) / 1000).toFixed(1)} s`)
  process.exitCode = summary() === 0 ? 0 : 1
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main()
}
