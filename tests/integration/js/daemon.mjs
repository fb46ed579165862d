// Starts the real `sbx serve` for one test file and points the E2B SDK at it.
// Binary: $SBX_BIN or <repo>/build/sbx. Extra serve arguments: $SBX_SERVE_ARGS.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, before } from 'node:test'
import { fileURLToPath } from 'node:url'

import { Sandbox } from 'e2b'

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '../../..')

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function logTail(logPath, lines = 80) {
  try {
    const text = fs.readFileSync(logPath, 'utf8').split('\n')
    return `--- tail of ${logPath} ---\n` + text.slice(-lines).join('\n')
  } catch {
    return '(no daemon log)'
  }
}

export async function startDaemon() {
  const bin = process.env.SBX_BIN || path.join(repo, 'build', 'sbx')
  try {
    fs.accessSync(bin, fs.constants.X_OK)
  } catch {
    throw new Error(`sbx binary not found at ${bin} (build it, or set SBX_BIN)`)
  }
  // Sandbox uids must be able to traverse every parent of the state dir, so it lives in
  // /var/tmp with mode 0711 (mkdtemp makes 0700 dirs).
  const base = fs.mkdtempSync(path.join('/var/tmp', 'sbx-js-'))
  fs.chmodSync(base, 0o711)
  const stateDir = path.join(base, 'state')
  fs.mkdirSync(stateDir, { mode: 0o711 })
  const logPath = path.join(base, 'daemon.log')
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const apiKey = 'e2b_' + randomBytes(20).toString('hex')
  const extra = (process.env.SBX_SERVE_ARGS || '').split(/\s+/).filter(Boolean)
  const argv = ['serve', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir,
    '--api-key', apiKey, ...extra]
  const log = fs.openSync(logPath, 'a')
  // detached: own session, so the daemon gets only the signals we send it.
  const child = spawn(bin, argv, { stdio: ['ignore', log, log], detached: true })
  let exited = null
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = { code, signal }
    resolve(exited)
  }))

  for (const v of ['E2B_DEBUG', 'E2B_DOMAIN']) delete process.env[v]
  process.env.E2B_API_URL = url
  process.env.E2B_SANDBOX_URL = url
  process.env.E2B_VOLUME_API_URL = url // the volume content API
  process.env.E2B_API_KEY = apiKey

  const headers = { 'X-API-KEY': apiKey }
  const deadline = Date.now() + Number(process.env.SBX_START_TIMEOUT || 60) * 1000
  let last = ''
  for (;;) {
    if (exited) {
      throw new Error(`sbx serve exited (${JSON.stringify(exited)}) while starting\n${logTail(logPath)}`)
    }
    try {
      const res = await fetch(`${url}/v2/sandboxes`, { headers, signal: AbortSignal.timeout(2000) })
      await res.arrayBuffer()
      if (res.status === 200) break
      last = `status ${res.status}`
    } catch (e) {
      last = String(e)
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`sbx serve not ready (last: ${last})\n${logTail(logPath)}`)
    }
    await sleep(50)
  }

  return {
    url,
    apiKey,
    stateDir,
    logPath,
    port,
    get alive() {
      return exited === null
    },
    logTail: () => logTail(logPath),
    async request(method, p, body) {
      const res = await fetch(url + p, {
        method,
        headers: { ...headers, ...(body ? { 'Content-Type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      })
      const text = await res.text()
      return { status: res.status, headers: res.headers, text }
    },
    // Kills every sandbox, SIGTERMs the daemon (SIGKILL after 10 s) and throws unless it
    // exited with status 0.
    async stop() {
      if (exited) throw new Error(`sbx serve died earlier: ${JSON.stringify(exited)}\n${logTail(logPath)}`)
      try {
        const { status, text } = await this.request('GET', '/v2/sandboxes?limit=100')
        if (status === 200) {
          for (const s of JSON.parse(text)) await this.request('DELETE', `/sandboxes/${s.sandboxID}`)
        }
      } catch {
        // best effort
      }
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10000)
      const res = await exitPromise
      clearTimeout(timer)
      fs.closeSync(log)
      const tail = logTail(logPath)
      // The state dir goes either way (its layers are hard links of the host's cache, but a
      // run of every file would still leave dozens of them behind).
      fs.rmSync(base, { recursive: true, force: true })
      if (res.code !== 0) {
        throw new Error(`sbx serve exited with ${JSON.stringify(res)} after SIGTERM\n${tail}`)
      }
    },
  }
}

// Waits until fn() is truthy (polling), or throws after timeoutMs.
export async function waitFor(fn, timeoutMs = 10000, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await fn()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

// Hooks for a test file whose tests share one sandbox: before them a daemon starts and a
// sandbox is created with the Sandbox.create options opts; use(daemon, sbx) receives each as
// soon as it exists. After the tests the sandbox is killed and the daemon stopped.
export function shareSandbox(opts, use) {
  let daemon
  let sbx
  before(async () => {
    daemon = await startDaemon()
    use(daemon, undefined)
    sbx = await Sandbox.create({ timeoutMs: 300_000, ...opts })
    use(daemon, sbx)
  })
  after(async () => {
    if (sbx) await sbx.kill().catch(() => {})
    await daemon?.stop()
  })
}

export { sleep }
