// PTY sessions through the official JS SDK.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { CommandExitError, Sandbox } from 'e2b'

import { shareSandbox, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
let sbx

class Screen {
  constructor() {
    this.text = ''
    this.decoder = new TextDecoder()
    this.onData = (d) => { this.text += this.decoder.decode(d, { stream: true }) }
  }
}

// Types `echo "Q<n>=$(expr)"` and returns what the shell printed after `Q<n>=`.
let q = 0
async function ask(s, pid, screen, expr) {
  const marker = `Q${++q}x`
  const start = screen.text.length
  await s.pty.sendInput(pid, new TextEncoder().encode(`echo "${marker}=$(${expr})"\n`))
  const rx = new RegExp(`${marker}=([^$\\r\\n][^\\r\\n]*)`)
  let m = null
  await waitFor(() => (m = rx.exec(screen.text.slice(start))), 10_000, `PTY answer to ${expr}; got ${JSON.stringify(screen.text.slice(-300))}`)
  return m[1].trim()
}

shareSandbox({}, (d, s) => {
  daemon = d
  sbx = s
})

describe('pty', () => {
  test('create with size, tput, resize, sendInput', T, async () => {
    const screen = new Screen()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: screen.onData })
    assert.ok(h.pid > 0)
    assert.equal(await ask(sbx, h.pid, screen, 'tput cols'), '80')
    assert.equal(await ask(sbx, h.pid, screen, 'tput lines'), '24')
    assert.equal(await ask(sbx, h.pid, screen, 'echo $TERM'), 'xterm-256color')
    await sbx.pty.resize(h.pid, { cols: 132, rows: 40 })
    assert.equal(await ask(sbx, h.pid, screen, 'tput cols'), '132')
    assert.equal(await ask(sbx, h.pid, screen, 'stty size'), '40 132')
    assert.equal(await ask(sbx, h.pid, screen, 'whoami'), 'user')
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode('exit 0\n'))
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
  })

  test('pty as root with cwd and envs', T, async () => {
    const screen = new Screen()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: screen.onData, user: 'root', cwd: '/tmp', envs: { PTY_VAR: 'pv' } })
    assert.equal(await ask(sbx, h.pid, screen, 'whoami'), 'root')
    assert.equal(await ask(sbx, h.pid, screen, 'pwd'), '/tmp')
    assert.equal(await ask(sbx, h.pid, screen, 'echo $PTY_VAR'), 'pv')
    assert.equal(await sbx.pty.kill(h.pid), true)
  })

  test('kill a pty', T, async () => {
    const screen = new Screen()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: screen.onData })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid))
    assert.equal(await sbx.pty.kill(h.pid), true)
    await assert.rejects(h.wait(), CommandExitError)
    await waitFor(async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid), 5000, 'pty gone')
  })

  test('disconnect and reconnect from another handle', T, async () => {
    const first = new Screen()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: first.onData, timeoutMs: 0 })
    assert.equal(await ask(sbx, h.pid, first, 'echo before'), 'before')
    await h.disconnect()
    const other = await Sandbox.connect(sbx.sandboxId)
    const second = new Screen()
    const h2 = await other.pty.connect(h.pid, { onData: second.onData, timeoutMs: 0 })
    assert.equal(h2.pid, h.pid)
    assert.equal(await ask(other, h.pid, second, 'echo $((40+2))'), '42')
    const seen = first.text.length
    await other.pty.sendInput(h.pid, new TextEncoder().encode('exit 0\n'))
    assert.equal((await h2.wait()).exitCode, 0)
    assert.equal(first.text.length, seen, 'a disconnected handle gets no output')
  })

  test('the daemon is still alive', () => {
    assert.equal(daemon.alive, true, daemon.logTail())
  })
})
