// Snapshots and fork through the official JS SDK: the official E2B tests of spec lifecycle.md
// §8.2 (tests/sandbox/snapshot-api.test.ts) and §8.3 (tests/sandbox/fork.test.ts), ported from
// vitest to node:test with their assertions kept.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { Sandbox, SandboxNotFoundError } from 'e2b'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
const made = []
const snapshots = []

async function create(template, opts = {}) {
  const sbx = template
    ? await Sandbox.create(template, { timeoutMs: 120_000, ...opts })
    : await Sandbox.create({ timeoutMs: 120_000, ...opts })
  made.push(sbx.sandboxId)
  return sbx
}

async function snapshot(sandbox, opts) {
  const snap = await sandbox.createSnapshot(opts)
  snapshots.push(snap.snapshotId)
  return snap
}

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {})
  for (const id of snapshots) await Sandbox.deleteSnapshot(id).catch(() => {})
  await daemon?.stop()
})

describe('snapshot-api.test.ts', () => {
  test('create a snapshot', T, async () => {
    const sandbox = await create()
    const snap = await sandbox.createSnapshot()
    assert.ok(snap.snapshotId)
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
  })

  test('create sandbox from snapshot', T, async () => {
    const sandbox = await create()
    await sandbox.files.write('/home/user/test.txt', 'snapshot content')
    const snap = await snapshot(sandbox)
    const restored = await create(snap.snapshotId)
    assert.equal(await restored.files.read('/home/user/test.txt'), 'snapshot content')
  })

  test('multiple sandboxes from same snapshot', T, async () => {
    const sandbox = await create()
    await sandbox.files.write('/home/user/shared.txt', 'shared')
    const snap = await snapshot(sandbox)
    const a = await create(snap.snapshotId)
    const b = await create(snap.snapshotId)
    assert.equal(await a.files.read('/home/user/shared.txt'), 'shared')
    assert.equal(await b.files.read('/home/user/shared.txt'), 'shared')
    await a.files.write('/home/user/shared.txt', 'changed')
    assert.equal(await b.files.read('/home/user/shared.txt'), 'shared')
  })

  test('list snapshots', T, async () => {
    const sandbox = await create()
    const snap = await snapshot(sandbox)
    const paginator = Sandbox.listSnapshots()
    assert.equal(paginator.hasNext, true)
    const items = await paginator.nextItems()
    assert.ok(items.some((s) => s.snapshotId === snap.snapshotId))
  })

  test('list snapshots for specific sandbox', T, async () => {
    const sandbox = await create()
    const snap = await snapshot(sandbox)
    const items = await sandbox.listSnapshots().nextItems()
    assert.ok(items.some((s) => s.snapshotId === snap.snapshotId))
  })

  test('create a named snapshot', T, async () => {
    const sandbox = await create()
    const name = `snap-${randomUUID().slice(0, 8)}`
    const snap = await snapshot(sandbox, { name })
    assert.ok(snap.names.length > 0)
    assert.ok(snap.names.some((n) => n.includes(name)))
  })

  test('list snapshots filtered by name', T, async () => {
    const sandbox = await create()
    const name = `snap-${randomUUID().slice(0, 8)}`
    const snap = await snapshot(sandbox, { name })
    const items = await Sandbox.listSnapshots({ name }).nextItems()
    assert.ok(items.some((s) => s.snapshotId === snap.snapshotId))
    const none = await Sandbox.listSnapshots({ name: `${name}-does-not-exist` }).nextItems()
    assert.deepEqual(none, [])
  })

  test('delete snapshot', T, async () => {
    const sandbox = await create()
    const snap = await sandbox.createSnapshot()
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
  })

  test('snapshot preserves filesystem state', T, async () => {
    const sandbox = await create()
    await sandbox.files.makeDir('/home/user/app')
    await sandbox.files.write('/home/user/app/main.py', 'print("hello")')
    await sandbox.files.write('/home/user/app/config.json', '{"key": "value"}')
    const snap = await snapshot(sandbox)
    const restored = await create(snap.snapshotId)
    assert.equal(await restored.files.exists('/home/user/app'), true)
    assert.equal(await restored.files.read('/home/user/app/main.py'), 'print("hello")')
    assert.equal(await restored.files.read('/home/user/app/config.json'), '{"key": "value"}')
  })
})

describe('fork.test.ts', () => {
  const forkSnapshots = async (id) => {
    for (const s of await Sandbox.listSnapshots({ sandboxId: id }).nextItems())
      snapshots.push(s.snapshotId)
  }

  test('fork a sandbox', T, async () => {
    const sandbox = await create()
    await sandbox.files.write('/home/user/state.txt', 'original')
    const forks = await sandbox.fork()
    assert.equal(forks.length, 1)
    const fork = forks[0]
    made.push(fork.sandboxId)
    await forkSnapshots(sandbox.sandboxId)
    assert.notEqual(fork.sandboxId, sandbox.sandboxId)
    assert.equal(await sandbox.isRunning(), true)
    assert.equal(await fork.isRunning(), true)
    assert.equal(await fork.files.read('/home/user/state.txt'), 'original')
    await fork.files.write('/home/user/state.txt', 'forked')
    assert.equal(await sandbox.files.read('/home/user/state.txt'), 'original')
  })

  test('fork multiple times', T, async () => {
    const sandbox = await create()
    const forks = await sandbox.fork({ count: 2, timeoutMs: 60_000 })
    made.push(...forks.map((f) => f.sandboxId))
    await forkSnapshots(sandbox.sandboxId)
    assert.equal(forks.length, 2)
    assert.notEqual(forks[0].sandboxId, forks[1].sandboxId)
    for (const f of forks) {
      assert.notEqual(f.sandboxId, sandbox.sandboxId)
      assert.equal(await f.isRunning(), true)
    }
  })

  test('static fork', T, async () => {
    const sandbox = await create()
    const forks = await Sandbox.fork(sandbox.sandboxId)
    made.push(...forks.map((f) => f.sandboxId))
    await forkSnapshots(sandbox.sandboxId)
    assert.equal(forks.length, 1)
    assert.equal(await forks[0].isRunning(), true)
  })

  test('fork a killed sandbox', T, async () => {
    const sandbox = await create()
    await sandbox.kill()
    await assert.rejects(sandbox.fork(), SandboxNotFoundError)
  })

  // The official test expects the client-side InvalidArgumentError of JS 2.45; npm 2.51 sends
  // the count, and the server's 400 is what the caller gets.
  test('fork with count lower than 1', T, async () => {
    const sandbox = await create()
    await assert.rejects(sandbox.fork({ count: 0 }), /count must be between 1 and 100/)
  })

  test('fork of a paused sandbox is refused', T, async () => {
    const sandbox = await create()
    await sandbox.pause()
    await assert.rejects(sandbox.fork(), /is paused and cannot be forked; resume it first/)
  })
})
