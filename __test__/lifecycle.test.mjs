// Resources of the Node binding (issue 10), each measured in a child process of its own
// (fixtures/lifecycle-child.mjs) against a private redis-server, so that the server's
// connection count is this test's alone:
// 1. limiters dropped without close() are freed by GC: threads, file descriptors and the
//    server's connections return to the baseline (± SLACK);
// 2. the thread count does not grow with the number of limiters: Node's own threads plus two
//    `trypema-io` and one `trypema-cleanup`, with 10 or 1000 live limiters;
// 3. when no thread can be started (RLIMIT_NPROC), build() rejects with TRYPEMA_INTERNAL and the
//    process does not abort;
// 4. terminating worker threads with Redis calls in flight releases their connections and fds.
import { test, describe, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { startRedis } from '../scripts/redis-server.mjs'
import { assertCleanExit, lineChild, privateRedis, requirement, runNode, tool } from './support.mjs'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CHILD = fileURLToPath(new URL('./fixtures/lifecycle-child.mjs', import.meta.url))
/** How far a count may end above its baseline (a socket in TIME_WAIT teardown, a late thread exit). */
const SLACK = 3

let server

before(async () => {
  privateRedis.check()
  if (privateRedis.skip) return
  server = await startRedis()
})

after(async () => {
  await server?.stop()
})

/** Runs the child in `mode` with --expose-gc; returns its JSON result. */
async function child(args, options = {}) {
  const result = await runNode(['--expose-gc', CHILD, ...args], { timeoutMs: 60_000, ...options })
  assertCleanExit(result, `lifecycle-child ${args[0]}`)
  const lines = result.stdout.trim().split('\n')
  return JSON.parse(lines.at(-1))
}

function summary(m) {
  return `threads ${m.threads} [${m.names.join(',')}], fds ${m.fds}, clients ${m.clients}`
}

function assertBack(base, after, what) {
  const detail = `${what}: baseline ${summary(base)}; after ${summary(after)}`
  assert.ok(after.threads <= base.threads + SLACK, `threads: ${detail}`)
  assert.ok(after.fds <= base.fds + SLACK, `fds: ${detail}`)
  if (base.clients !== null) assert.ok(after.clients <= base.clients + SLACK, `server connections: ${detail}`)
  assert.ok(!after.names.includes('trypema-cleanup'), `the cleanup thread must end with the last limiter: ${detail}`)
}

describe('limiters dropped without close() are freed by GC', { skip: privateRedis.skip }, () => {
  test('200 Redis limiters (each used through rl.redis and rl.hybrid): threads, fds and server connections back to the baseline', async () => {
    const { base, peak, after, collected, works } = await child(['gc-redis', server.url, '200'])
    // The measurement can see a leak: while alive, the limiters held a connection each.
    assert.ok(peak.clients >= base.clients + 200, `peak ${summary(peak)}`)
    assert.ok(peak.fds >= base.fds + 200, `peak ${summary(peak)}`)
    assert.equal(collected, 200, 'every RateLimiter object was garbage-collected')
    assertBack(base, after, '200 Redis limiters')
    assert.equal(works, 'allowed', 'a limiter built afterwards works')
  })

  test('1000 local limiters: threads and fds back to the baseline, cleanup thread gone', async () => {
    const { base, peak, after, collected } = await child(['gc-local', '1000'])
    assert.ok(peak.names.includes('trypema-cleanup'), `peak ${summary(peak)}`)
    assert.equal(collected, 1000)
    assertBack(base, after, '1000 local limiters')
  })
})

describe('threads', { skip: privateRedis.skip }, () => {
  test("1000 live limiters use Node's threads + 2 trypema-io + 1 trypema-cleanup, as 10 do", async () => {
    const { before: nodeThreads, at10, atN, closed, working, live } = await child(['threads', server.url, '1000'])
    assert.equal(live, 1000)
    assert.equal(working, 1000, 'every limiter was alive and working at the measurement')
    const own = (names) => names.filter((name) => name.startsWith('trypema'))
    const expected = [...nodeThreads, 'trypema-cleanup', 'trypema-io', 'trypema-io'].sort()
    assert.deepEqual(at10, expected, `with 10 limiters (Node's own: ${nodeThreads.length})`)
    assert.deepEqual(atN, expected, 'with 1000 limiters')
    assert.deepEqual(own(atN), ['trypema-cleanup', 'trypema-io', 'trypema-io'])
    // Once all are closed, the cleanup thread ends; the I/O runtime's two threads stay.
    assert.deepEqual(own(closed), ['trypema-io', 'trypema-io'])
  })
})

describe('worker threads terminated with Redis calls in flight', { skip: privateRedis.skip }, () => {
  test('20 workers × 100 calls in flight, terminated: server connections and fds back to the baseline', async () => {
    const { base, peak, after, first, codes, works } = await child(['workers', server.url, '20'])
    assert.deepEqual(first, ['in flight'], 'every worker had its calls in flight')
    assert.deepEqual(codes, [1], 'every worker was terminated (exit code 1)')
    assert.ok(peak.clients >= base.clients + 20, `peak ${summary(peak)}`)
    assertBack(base, after, '20 terminated workers')
    assert.equal(works, 'allowed', 'the main thread still builds and uses limiters')
  })
})

// RLIMIT_NPROC is ignored for root, so the child runs as `nobody`, from a copy of the package
// that `nobody` can read (and that a rebuild of the addon cannot change mid-test).
const setpriv = tool('setpriv', ['--version'])
const prlimit = tool('prlimit', ['--version'])
// Like the quick-start test, this one needs root; as any other user it is skipped, saying why.
const notRoot = process.getuid?.() !== 0
if (notRoot) console.log('# skipping the RLIMIT_NPROC tests: they need root (to start the child as nobody)')
const root = { skip: notRoot && 'needs root (to start the child as nobody)', check() {} }
const nprocSkip = privateRedis.skip || setpriv.skip || prlimit.skip || root.skip

describe('no thread can be started (RLIMIT_NPROC)', { skip: nprocSkip }, () => {
  let copy
  const children = []

  afterEach(() => {
    for (const run of children.splice(0)) run.child.kill('SIGKILL') // no-op once exited
  })

  before(() => {
    setpriv.check()
    prlimit.check()
    root.check()
    copy = mkdtempSync(join(tmpdir(), 'trypema-nproc-'))
    mkdirSync(join(copy, 'fixtures'))
    for (const file of ['index.js', 'index.mjs', 'binding.js', 'platform.js', 'package.json', 'trypema.linux-x64-gnu.node']) {
      copyFileSync(join(ROOT, file), join(copy, file))
    }
    for (const file of ['lifecycle-child.mjs', 'resp.mjs']) copyFileSync(join(ROOT, '__test__', 'fixtures', file), join(copy, 'fixtures', file))
    chmodSync(copy, 0o755)
    chmodSync(join(copy, 'fixtures'), 0o755)
  })

  after(() => {
    if (copy) rmSync(copy, { recursive: true, force: true })
  })

  /** Runs prlimit as `nobody` (same user as the child: no capability needed) on process `pid`. */
  function prlimitAsNobody(pid, setting) {
    const result = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', 'prlimit', '--pid', String(pid), setting], { encoding: 'utf8' })
    assert.equal(result.status, 0, `prlimit ${setting}: ${result.stderr}`)
  }

  /**
   * Starts the child as nobody; once it asks, lowers its soft RLIMIT_NPROC to the threads it
   * has, so that no new thread (or process) of that user can start.
   */
  async function limitedChild(mode, ...args) {
    const run = lineChild(
      ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', process.execPath, '--expose-gc', join(copy, 'fixtures', 'lifecycle-child.mjs'), mode, ...args],
      {
        timeoutMs: 30_000,
        env: { ...process.env, TRYPEMA_INDEX: join(copy, 'index.mjs'), HOME: copy, RUST_BACKTRACE: '0' },
        command: 'setpriv',
      },
    )
    children.push(run)
    const ask = await run.next()
    const match = /^limit-me (\d+) (\d+)$/.exec(ask)
    assert.ok(match, `unexpected first line ${JSON.stringify(ask)}; stderr: ${run.stderr}`)
    const [, pid, threads] = match
    prlimitAsNobody(pid, `--nproc=${threads}:`)
    run.send('go')
    return { run, pid }
  }

  async function finish(run) {
    const lines = []
    for (;;) {
      try {
        lines.push(await run.next())
      } catch {
        break
      }
    }
    const { code, signal, stderr } = await run.exit
    return { lines, code, signal, stderr }
  }

  for (const [mode, what] of [
    ['nproc-local', 'a local limiter (its cleanup thread cannot start)'],
    ['nproc-redis', 'a Redis limiter (the I/O threads cannot start)'],
  ]) {
    test(`${what}: build() rejects with TRYPEMA_INTERNAL; the process exits 0`, async () => {
      const { run } = await limitedChild(mode, server.url)
      const { lines, code, signal, stderr } = await finish(run)
      const result = lines.length > 0 ? JSON.parse(lines.at(-1)) : null
      const problems = []
      if (result === null) problems.push('no result printed')
      else if (!/^TRYPEMA_INTERNAL: /.test(result.code)) problems.push(`build() gave ${result.code}, not TRYPEMA_INTERNAL`)
      if (signal !== null) problems.push(`the process died of ${signal}`)
      else if (code !== 0) problems.push(`the process exited with ${code}`)
      assert.deepEqual(problems, [], `${problems.join('; ')}; stderr: ${stderr.slice(0, 1500)}`)
    })
  }

  test('after the limit is lifted, the same process builds and uses limiters', async () => {
    const { run, pid } = await limitedChild('nproc-recover', server.url)
    const failed = await run.next()
    // (Which code is checked by the test above.)
    assert.match(failed, /^failed [A-Za-z_]+: /, 'build() must fail while no thread can start')
    // Back to the hard limit (which was never lowered).
    const hard = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((line) => line.startsWith('Max processes')).trim().split(/\s+/)[3]
    prlimitAsNobody(pid, `--nproc=${hard}:`)
    run.send('lifted')
    const { lines, code, signal, stderr } = await finish(run)
    assert.equal(signal, null, stderr.slice(0, 2000))
    assert.equal(code, 0, stderr.slice(0, 2000))
    assert.equal(JSON.parse(lines.at(-1)).after, 'allowed/allowed')
  })
})
