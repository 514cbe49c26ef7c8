// The install test's consumers under other Node.js majors: installs dist/'s tarballs once (as
// scripts/install-test.mjs does), then runs the CommonJS, ESM and Express consumers under this
// node and under Node 22 and 24. The other nodes are the official binaries npm publishes as
// `node-<os>-<arch>` packages; they are fetched with `npm pack` once and kept in
// node_modules/.cache/trypema-node-versions/.
//
//   node scripts/node-versions-test.mjs [--dist dir] [--no-redis] [--majors 22,24]
//
// Prints one line per check and `N passed, N failed`; exits 1 on a failure.
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  check,
  installChecks,
  parseArgs,
  prepare,
  readTarball,
  redisFor,
  runConsumers,
  summary,
  typingsCheck,
} from './install-test.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const cache = join(root, 'node_modules', '.cache', 'trypema-node-versions')

/** npm's package of the official node binary for this machine, or null where there is none. */
function nodePackage() {
  if (process.platform === 'linux' && !process.report.getReport().header.glibcVersionRuntime) return null // musl
  const os = { linux: 'linux', darwin: 'darwin', win32: 'win' }[process.platform]
  return os && ['x64', 'arm64'].includes(process.arch) ? `node-${os}-${process.arch}` : null
}

/** The path of a node binary of `major`, fetched from the npm registry on first use. */
function nodeBinary(pkg, major) {
  const dir = join(cache, `${pkg}-${major}`)
  const binary = join(dir, process.platform === 'win32' ? 'node.exe' : 'node')
  if (existsSync(binary)) return binary
  mkdirSync(dir, { recursive: true })
  console.log(`fetching ${pkg}@${major} from the npm registry (npm pack)`)
  const packed = spawnSync('npm', ['pack', `${pkg}@${major}`, '--pack-destination', dir, '--silent'], {
    encoding: 'utf8',
    shell: process.platform === 'win32',
  })
  if (packed.status !== 0) throw new Error(`npm pack ${pkg}@${major} failed: ${packed.stderr}`)
  const tarball = readdirSync(dir).find((name) => name.endsWith('.tgz'))
  const inside = process.platform === 'win32' ? 'package/bin/node.exe' : 'package/bin/node'
  const extracted = spawnSync('tar', ['-xzf', join(dir, tarball), '-C', dir, inside])
  if (extracted.status === 0) {
    renameSync(join(dir, inside), binary)
  } else {
    writeFileSync(binary, readTarball(join(dir, tarball))[inside])
  }
  chmodSync(binary, 0o755)
  rmSync(join(dir, tarball), { force: true })
  rmSync(join(dir, 'package'), { recursive: true, force: true })
  return binary
}

async function main() {
  const argv = process.argv.slice(2)
  let majors = ['22', '24']
  const at = argv.indexOf('--majors')
  if (at !== -1) {
    majors = argv[at + 1].split(',')
    argv.splice(at, 2)
  }
  const options = parseArgs(argv)
  const pkg = nodePackage()
  const nodes = [{ label: `node ${process.versions.node.split('.')[0]} (this one)`, path: process.execPath }]
  for (const major of majors) {
    await check(`Node ${major} binary from the npm registry (${pkg ?? 'none for this platform'})`, () => {
      if (pkg === null) throw new Error(`npm publishes no node binary package for ${process.platform} ${process.arch} (musl?)`)
      const path = nodeBinary(pkg, major)
      const version = spawnSync(path, ['--version'], { encoding: 'utf8' }).stdout.trim()
      if (!version.startsWith(`v${major}.`)) throw new Error(`${path} says ${version}`)
      nodes.push({ label: `node ${major}`, path })
      return version
    })
  }

  let ctx
  let redis
  try {
    ctx = await prepare(options)
    if (!(await installChecks(ctx))) throw new Error('the install failed; see above')
    redis = await redisFor(options)
    for (const node of nodes) {
      // A fresh Redis database for each node: the Express consumer's key is the client address.
      if (redis.url && !options.redisUrl) {
        await redis.stop()
        redis = await redisFor(options)
      }
      await runConsumers({ project: ctx.project, env: ctx.env, node: node.path, redisUrl: redis.url, addonDir: ctx.addonDir, label: `${node.label}: ` })
    }
    await typingsCheck(ctx)
  } catch (error) {
    await check('node versions test set-up', () => {
      throw error
    })
  } finally {
    await redis?.stop()
    await ctx?.cleanup()
  }
  process.exitCode = summary() === 0 ? 0 : 1
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main()
}
