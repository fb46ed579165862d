// commands.* through the official JS SDK.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { CommandExitError, InvalidArgumentError, Sandbox, TimeoutError } from 'e2b'

import { shareSandbox, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
let sbx

const pids = async (s = sbx) => new Set((await s.commands.list()).map((p) => p.pid))

shareSandbox({ envs: { SBX_GLOBAL: 'global' } }, (d, s) => {
  daemon = d
  sbx = s
})

describe('commands', () => {
  test('run: stdout, stderr, exit code', T, async () => {
    const r = await sbx.commands.run('echo out; echo err >&2')
    assert.deepEqual([r.exitCode, r.stdout, r.stderr], [0, 'out\n', 'err\n'])
  })

  test('non-zero exit throws CommandExitError', T, async () => {
    await assert.rejects(sbx.commands.run('echo partial; echo boom >&2; exit 3'), (e) => {
      assert.ok(e instanceof CommandExitError)
      assert.equal(e.exitCode, 3)
      assert.equal(e.stdout, 'partial\n')
      assert.equal(e.stderr, 'boom\n')
      return true
    })
  })

  test('background + wait, streaming callbacks', T, async () => {
    const t0 = Date.now()
    const out = []
    const err = []
    const h = await sbx.commands.run('for i in 1 2 3; do echo o$i; echo e$i >&2; sleep 0.4; done', {
      background: true,
      onStdout: (d) => out.push([d, Date.now() - t0]),
      onStderr: (d) => err.push(d),
    })
    assert.ok(Date.now() - t0 < 1000, 'background run returns at once')
    assert.ok(h.pid > 0)
    assert.ok((await pids()).has(h.pid))
    const r = await h.wait()
    const total = Date.now() - t0
    assert.equal(r.exitCode, 0)
    assert.equal(out.map((x) => x[0]).join(''), 'o1\no2\no3\n')
    assert.equal(err.join(''), 'e1\ne2\ne3\n')
    assert.equal(r.stdout, 'o1\no2\no3\n')
    assert.ok(out[0][1] < total - 600, 'output is streamed, not delivered at exit')
    await waitFor(async () => !(await pids()).has(h.pid), 5000, 'exited process to leave the list')
  })

  test('stdin: sendStdin and closeStdin', T, async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true })
    await h.sendStdin('hello\n')
    await sbx.commands.sendStdin(h.pid, 'world\n')
    await h.closeStdin()
    const r = await h.wait()
    assert.equal(r.stdout, 'hello\nworld\n')
  })

  test('kill a command; kill of an unknown pid is false', T, async () => {
    const h = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 0 })
    assert.ok((await pids()).has(h.pid))
    assert.equal(await sbx.commands.kill(h.pid), true)
    await assert.rejects(h.wait(), CommandExitError)
    await waitFor(async () => !(await pids()).has(h.pid), 5000, 'killed process to leave the list')
    assert.equal(await sbx.commands.kill(999999), false)
  })

  test('list shows cmd, args, envs, cwd', T, async () => {
    const h = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 0, envs: { LISTED: 'yes' }, cwd: '/tmp' })
    try {
      const p = (await sbx.commands.list()).find((x) => x.pid === h.pid)
      assert.ok(p)
      assert.equal(p.cmd, '/bin/bash')
      assert.deepEqual(p.args, ['-l', '-c', 'sleep 600'])
      assert.equal(p.envs.LISTED, 'yes')
      assert.equal(p.cwd, '/tmp')
    } finally {
      await h.kill()
    }
  })

  test('connect to a running command from a second handle', T, async () => {
    const h1 = await sbx.commands.run('sleep 1.5; echo from-the-process', { background: true })
    const other = await Sandbox.connect(sbx.sandboxId)
    const h2 = await other.commands.connect(h1.pid)
    assert.equal(h2.pid, h1.pid)
    const r2 = await h2.wait()
    assert.equal(r2.stdout, 'from-the-process\n')
    const r1 = await h1.wait()
    assert.equal(r1.stdout, 'from-the-process\n')
  })

  test('disconnect leaves the process running', T, async () => {
    const h = await sbx.commands.run('sleep 2; echo still-here', { background: true })
    await h.disconnect()
    assert.ok((await pids()).has(h.pid))
    const r = await (await sbx.commands.connect(h.pid)).wait()
    assert.equal(r.stdout, 'still-here\n')
  })

  test('envs: per command, sandbox-wide, no leaks', T, async () => {
    assert.equal((await sbx.commands.run('echo $FOO', { envs: { FOO: 'bar' } })).stdout, 'bar\n')
    assert.equal((await sbx.commands.run('echo "[$FOO]"')).stdout, '[]\n')
    assert.equal((await sbx.commands.run('echo $SBX_GLOBAL')).stdout, 'global\n')
    assert.equal((await sbx.commands.run('echo $SBX_GLOBAL', { envs: { SBX_GLOBAL: 'over' } })).stdout, 'over\n')
    assert.equal((await sbx.commands.run('echo $SBX_GLOBAL', { user: 'root' })).stdout, 'global\n')
  })

  test('users: default user, root, sudo', T, async () => {
    const u = await sbx.commands.run('whoami; id -u; echo $HOME; pwd')
    assert.deepEqual(u.stdout.split(/\s+/).filter(Boolean), ['user', '1000', '/home/user', '/home/user'])
    const r = await sbx.commands.run('whoami; id -u', { user: 'root' })
    assert.deepEqual(r.stdout.split(/\s+/).filter(Boolean), ['root', '0'])
    assert.equal((await sbx.commands.run('sudo -n whoami')).stdout, 'root\n')
  })

  test('cwd, and a missing cwd is InvalidArgumentError', T, async () => {
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/no/such/dir' }), InvalidArgumentError)
  })

  test('timeoutMs: command killed, TimeoutError', T, async () => {
    const t0 = Date.now()
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 2000 }), TimeoutError)
    assert.ok(Date.now() - t0 < 15_000)
    const h = await sbx.commands.run('sleep 31', { background: true, timeoutMs: 2000 })
    await assert.rejects(h.wait(), TimeoutError)
    await waitFor(
      async () => !(await sbx.commands.list()).some((p) => ['sleep 30', 'sleep 31'].includes(p.args.at(-1))),
      5000, 'timed-out commands to be killed')
  })

  test('killing the sandbox while a command streams rejects with "sandbox was killed"', T, async () => {
    const victim = await Sandbox.create({ timeoutMs: 60_000 })
    let ticks = 0
    const h = await victim.commands.run('while true; do echo tick; sleep 0.2; done', {
      background: true,
      timeoutMs: 0,
      onStdout: () => { ticks++ },
    })
    await waitFor(() => ticks > 0, 10_000, 'first output')
    const t0 = Date.now()
    assert.equal(await Sandbox.kill(victim.sandboxId), true)
    await assert.rejects(h.wait(), (e) => {
      assert.ok(e instanceof TimeoutError, `${e?.constructor?.name}: ${e?.message}`)
      assert.match(e.message, /killed|not found/)
      return true
    })
    assert.ok(Date.now() - t0 < 20_000)
    assert.equal(await victim.isRunning(), false)
  })

  test('the daemon is still alive', () => {
    assert.equal(daemon.alive, true, daemon.logTail())
  })
})
