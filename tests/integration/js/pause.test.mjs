// Pause and resume through the official JS SDK: the official E2B tests of spec lifecycle.md
// §8 (tests/sandbox/snapshot.test.ts, lifecyclePayload.test.ts, api/snapshot.test.ts,
// sandbox/connect.test.ts, api/list.test.ts), ported from vitest to node:test with their
// assertions kept. Left out: the three that fetch a server in the sandbox on port 8000 over
// https://getHost(8000), which needs ingress to arbitrary ports and TLS (network.md §3.5).
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { InvalidArgumentError, Sandbox } from 'e2b'

import { sleep, startDaemon, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
const made = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, ...opts })
  made.push(sbx.sandboxId)
  return sbx
}

const bootId = async (sbx) =>
  (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim()

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {})
  await daemon?.stop()
})

describe('snapshot.test.ts (pause and resume)', () => {
  test('pause and resume a sandbox', T, async () => {
    const sandbox = await create()
    assert.equal(await sandbox.isRunning(), true)
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    const resumedSandbox = await sandbox.connect()
    assert.equal(resumedSandbox.sandboxId, sandbox.sandboxId)
    assert.equal(await sandbox.isRunning(), true)
  })

  test('pause and resume a sandbox with env vars', T, async () => {
    const sandbox = await create({ envs: { TEST_VAR: 'sfisback' } })
    const cmd = await sandbox.commands.run('echo "$TEST_VAR"')
    assert.equal(cmd.exitCode, 0)
    assert.equal(cmd.stdout.trim(), 'sfisback')
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    const resumedSandbox = await sandbox.connect()
    assert.equal(await sandbox.isRunning(), true)
    assert.equal(await resumedSandbox.isRunning(), true)
    assert.equal(resumedSandbox.sandboxId, sandbox.sandboxId)
    const cmd2 = await sandbox.commands.run('echo "$TEST_VAR"')
    assert.equal(cmd2.exitCode, 0)
    assert.equal(cmd2.stdout.trim(), 'sfisback')
  })

  test('pause and resume a sandbox with file', T, async () => {
    const sandbox = await create()
    const filename = 'test_snapshot.txt'
    const content = 'This is a snapshot test file.'
    const info = await sandbox.files.write(filename, content)
    assert.equal(info.name, filename)
    assert.equal(info.type, 'file')
    assert.equal(info.path, `/home/user/${filename}`)
    assert.equal(await sandbox.files.exists(filename), true)
    assert.equal(await sandbox.files.read(filename), content)
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    await sandbox.connect()
    assert.equal(await sandbox.isRunning(), true)
    assert.equal(await sandbox.files.exists(filename), true)
    assert.equal(await sandbox.files.read(filename), content)
  })

  test('pause and resume a sandbox with ongoing long running process', T, async () => {
    const sandbox = await create()
    const cmd = await sandbox.commands.run('sleep 3600', { background: true })
    const expectedPid = cmd.pid
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    await sandbox.connect()
    assert.equal(await sandbox.isRunning(), true)
    const list = await sandbox.commands.list()
    assert.ok(list.some((c) => c.pid === expectedPid))
    const processInfo = await sandbox.commands.connect(expectedPid)
    assert.equal(typeof processInfo, 'object')
    assert.equal(processInfo.pid, expectedPid)
    await processInfo.disconnect()
  })

  test('pause and resume a sandbox with completed long running process', T, async () => {
    const sandbox = await create()
    const filename = 'test_long_running.txt'
    await sandbox.commands.run(`sleep 2 && echo "done" > /home/user/${filename}`, {
      background: true,
    })
    assert.equal(await sandbox.files.exists(filename), false)
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    await sandbox.connect()
    assert.equal(await sandbox.isRunning(), true)
    // E2B's test sleeps exactly as long as the command; on a loaded machine the shell may
    // start only after the resume, so wait for the file rather than race it.
    await waitFor(() => sandbox.files.exists(filename), 10_000, 'the command finished after resume')
    assert.equal((await sandbox.files.read(filename)).trim(), 'done')
  })

  test('filesystem-only pause reboots on resume but keeps the filesystem', T, async () => {
    const sandbox = await create()
    const filename = '/home/user/fs_only_snapshot.txt'
    const content = 'This is a filesystem-only snapshot test file.'
    await sandbox.files.write(filename, content)
    const bootBefore = await bootId(sandbox)
    await sandbox.pause({ keepMemory: false })
    assert.equal(await sandbox.isRunning(), false)
    const resumedSandbox = await sandbox.connect()
    assert.equal(resumedSandbox.sandboxId, sandbox.sandboxId)
    assert.equal(await resumedSandbox.isRunning(), true)
    assert.equal(await resumedSandbox.files.exists(filename), true)
    assert.equal(await resumedSandbox.files.read(filename), content)
    assert.notEqual(await bootId(resumedSandbox), bootBefore)
  })

  test('connect with onResume reboot boots a memory pause again', T, async () => {
    const sandbox = await create()
    const bootBefore = await bootId(sandbox)
    await sandbox.pause()
    await Sandbox.connect(sandbox.sandboxId, { onResume: 'reboot' })
    assert.notEqual(await bootId(sandbox), bootBefore)
  })
})

describe('lifecyclePayload.test.ts', () => {
  test('filesystem-only auto-pause cannot be combined with auto-resume', async () => {
    await assert.rejects(
      Sandbox.create({
        timeoutMs: 3_000,
        lifecycle: { onTimeout: { action: 'pause', keepMemory: false }, autoResume: true },
      }),
      InvalidArgumentError
    )
  })

  test('keepMemory is not allowed when onTimeout action is kill', async () => {
    await assert.rejects(
      Sandbox.create({
        timeoutMs: 3_000,
        lifecycle: { onTimeout: { action: 'kill', keepMemory: false } },
      }),
      InvalidArgumentError
    )
  })

  test('auto-pause without auto-resume requires connect to wake', T, async () => {
    const sandbox = await create({
      timeoutMs: 3_000,
      lifecycle: { onTimeout: 'pause', autoResume: false },
    })
    await sleep(5_000)
    assert.equal((await sandbox.getInfo()).state, 'paused')
    assert.equal(await sandbox.isRunning(), false)
    await sandbox.connect()
    assert.equal((await sandbox.getInfo()).state, 'running')
    assert.equal(await sandbox.isRunning(), true)
  })

  test('filesystem-only auto-pause reboots on connect', T, async () => {
    const sandbox = await create({
      timeoutMs: 3_000,
      lifecycle: { onTimeout: { action: 'pause', keepMemory: false } },
    })
    const marker = 'auto-pause-fs-only'
    await sandbox.files.write('/home/user/auto-pause-marker.txt', marker)
    const bootBefore = await bootId(sandbox)
    await sleep(5_000)
    assert.equal((await sandbox.getInfo()).state, 'paused')
    await sandbox.connect()
    assert.equal((await sandbox.files.read('/home/user/auto-pause-marker.txt')).trim(), marker)
    assert.notEqual(await bootId(sandbox), bootBefore)
  })

  test('auto-resume wakes a paused sandbox on a request (envd)', T, async () => {
    const sandbox = await create({
      timeoutMs: 3_000,
      lifecycle: { onTimeout: 'pause', autoResume: true },
    })
    const info = await sandbox.getInfo()
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: true })
    await sleep(5_000)
    assert.equal((await Sandbox.getInfo(sandbox.sandboxId)).state, 'paused')
    // isRunning's GET /health is a request to the sandbox: it wakes it (spec §3.3).
    assert.equal(await sandbox.isRunning(), true)
    assert.equal((await sandbox.getInfo()).state, 'running')
  })
})

describe('api/snapshot.test.ts and sandbox/connect.test.ts', () => {
  test('pause sandbox', T, async () => {
    const sandbox = await create()
    await Sandbox.pause(sandbox.sandboxId)
    assert.equal(await sandbox.isRunning(), false, 'Sandbox should not be running after pause')
  })

  test('resume sandbox', T, async () => {
    const sandbox = await create()
    await Sandbox.pause(sandbox.sandboxId)
    assert.equal(await sandbox.isRunning(), false)
    await Sandbox.connect(sandbox.sandboxId)
    assert.equal(await sandbox.isRunning(), true, 'Sandbox should be running after resume')
  })

  test('connect resumes paused sandbox', T, async () => {
    const sandbox = await create()
    await sandbox.pause()
    assert.equal(await sandbox.isRunning(), false)
    const resumed = await Sandbox.connect(sandbox.sandboxId)
    assert.equal(await resumed.isRunning(), true)
  })

  test('pausing twice answers false; unknown sandboxes are not found', T, async () => {
    const sandbox = await create()
    assert.equal(await sandbox.pause(), true)
    assert.equal(await sandbox.pause(), false)
    await assert.rejects(Sandbox.pause('nosuchsandbox0000'), { name: 'SandboxNotFoundError' })
    await assert.rejects(Sandbox.connect('nosuchsandbox0000'), { name: 'SandboxNotFoundError' })
  })
})

describe('api/list.test.ts (paused sandboxes)', () => {
  test('list paused sandboxes', T, async () => {
    const sandboxTestId = randomUUID()
    const extraSbx = await create({ metadata: { sandboxTestId } })
    await extraSbx.betaPause()
    const paginator = Sandbox.list({ query: { metadata: { sandboxTestId }, state: ['paused'] } })
    const sandboxes = await paginator.nextItems()
    assert.ok(sandboxes.length >= 1)
    assert.ok(sandboxes.some((s) => s.sandboxId === extraSbx.sandboxId && s.state === 'paused'))
  })

  test('paginate paused sandboxes', T, async () => {
    const sandboxTestId = randomUUID()
    const sandbox = await create({ metadata: { sandboxTestId } })
    await sandbox.betaPause()
    const extraSbx = await create({ metadata: { sandboxTestId } })
    await extraSbx.betaPause()
    const paginator = Sandbox.list({
      limit: 1,
      query: { metadata: { sandboxTestId }, state: ['paused'] },
    })
    const sandboxes = await paginator.nextItems()
    assert.equal(sandboxes.length, 1)
    assert.equal(sandboxes[0].state, 'paused')
    assert.equal(paginator.hasNext, true)
    assert.notEqual(paginator.nextToken, undefined)
    assert.equal(sandboxes[0].sandboxId, extraSbx.sandboxId)
    const sandboxes2 = await paginator.nextItems()
    assert.equal(sandboxes2.length, 1)
    assert.equal(sandboxes2[0].state, 'paused')
    assert.equal(paginator.hasNext, false)
    assert.equal(paginator.nextToken, undefined)
    assert.equal(sandboxes2[0].sandboxId, sandbox.sandboxId)
  })

  test('paginate running and paused sandboxes', T, async () => {
    const sandboxTestId = randomUUID()
    const sandbox = await create({ metadata: { sandboxTestId } })
    const extraSbx = await create({ metadata: { sandboxTestId } })
    await extraSbx.betaPause()
    const paginator = Sandbox.list({
      limit: 1,
      query: { metadata: { sandboxTestId }, state: ['running', 'paused'] },
    })
    const first = await paginator.nextItems()
    assert.equal(first[0].sandboxId, extraSbx.sandboxId)
    assert.equal(first[0].state, 'paused')
    const second = await paginator.nextItems()
    assert.equal(second[0].sandboxId, sandbox.sandboxId)
    assert.equal(second[0].state, 'running')
    assert.equal(paginator.hasNext, false)
  })
})

test('the daemon is still alive', async () => {
  await sleep(0)
  assert.equal(daemon.alive, true, daemon.logTail())
})
