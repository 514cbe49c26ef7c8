// Runs several limiter instances, each in a process of its own (fixtures/instance.mjs), released
// together, and collects what each admitted, in Redis server time. Used by the multi-instance
// tests of the hybrid and redis providers.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const FIXTURE = fileURLToPath(new URL('./fixtures/instance.mjs', import.meta.url))
const READY_TIMEOUT_MS = 20_000

/** A started instance: `result` resolves to its report; `kill()` ends it with SIGKILL. */
function launch(config) {
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
  const lines = createInterface({ input: child.stdout })
  const messages = []
  const waiting = []
  lines.on('line', (line) => {
    const message = JSON.parse(line)
    const index = waiting.findIndex((entry) => entry.accept(message))
    if (index === -1) messages.push(message)
    else waiting.splice(index, 1)[0].resolve(message)
  })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  function next(accept, what, timeoutMs) {
    const index = messages.findIndex(accept)
    if (index !== -1) return Promise.resolve(messages.splice(index, 1)[0])
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`instance: no ${what} within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs)
      const entry = {
        accept,
        resolve: (message) => {
          clearTimeout(timer)
          resolve(message)
        },
      }
      waiting.push(entry)
      exited.then(({ code, signal }) => {
        if (waiting.includes(entry)) {
          clearTimeout(timer)
          reject(new Error(`instance exited (${signal ?? code}) before ${what}; stderr: ${stderr}`))
        }
      })
    })
  }
  return {
    child,
    exited,
    ready: () => next((m) => m.ready === true, 'ready', READY_TIMEOUT_MS),
    result: (timeoutMs = 120_000) => next((m) => Array.isArray(m.allowed), 'result', timeoutMs),
    holding: () => next((m) => m.holding === true, 'holding', 60_000),
    start: (at) => child.stdin.write(`${at}\n`),
    kill: () => {
      child.kill('SIGKILL')
      return exited
    },
  }
}

/**
 * Starts every config as an instance, waits until all are connected, releases them together
 * (`delayMs` from now) and returns the started instances.
 */
export async function startInstances(configs, { delayMs = 300 } = {}) {
  const instances = configs.map(launch)
  try {
    await Promise.all(instances.map((instance) => instance.ready()))
  } catch (error) {
    // One failed to start: the others would wait for "start" forever (and keep the test alive).
    await Promise.all(instances.map((instance) => instance.kill()))
    throw error
  }
  const at = Date.now() + delayMs
  for (const instance of instances) instance.start(at)
  return instances
}

/** Runs `configs` to completion; resolves to their reports. */
export async function runInstances(configs, options) {
  const instances = await startInstances(configs, options)
  try {
    return await Promise.all(instances.map((instance) => instance.result()))
  } catch (error) {
    await Promise.all(instances.map((instance) => instance.kill()))
    throw error
  }
}

/** The most admissions inside any interval [t, t + spanMs) of the sorted times, and where. */
export function busiest(sorted, spanMs) {
  let best = { count: 0, at: 0 }
  let first = 0
  for (let last = 0; last < sorted.length; last++) {
    while (sorted[last] - sorted[first] >= spanMs) first++
    if (last + 1 - first > best.count) best = { count: last + 1 - first, at: sorted[first] }
  }
  return best
}

/** Counts per consecutive window of `windowMs` from `start`, for `windows` windows. */
export function perWindow(sorted, start, windowMs, windows) {
  const counts = new Array(windows).fill(0)
  for (const at of sorted) {
    const index = Math.floor((at - start) / windowMs)
    if (index >= 0 && index < windows) counts[index]++
  }
  return counts
}

/** All admissions of `reports`, sorted. */
export function merged(reports) {
  return reports.flatMap((report) => report.allowed).sort((a, b) => a - b)
}
