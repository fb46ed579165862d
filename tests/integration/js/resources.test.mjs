// What getInfo, list and getMetrics report of a sandbox's CPUs, memory and disk, against what
// the sandbox has: its cgroup's quota and limit as it reads them, nproc, MemTotal and `df /`.
// The daemon runs with non-default --cpus, --memory-mb and --disk-mb.
import assert from 'node:assert/strict'
import os from 'node:os'
import { after, before, test } from 'node:test'

import { Sandbox } from 'e2b'

import { startDaemon } from './daemon.mjs'

const CPUS = Math.min(2, os.availableParallelism())
const MEMORY_MB = 320
const DISK_MB = 96
let daemon
let sbx

before(async () => {
  process.env.SBX_SERVE_ARGS = `${process.env.SBX_SERVE_ARGS || ''} --cpus ${CPUS} ` +
    `--memory-mb ${MEMORY_MB} --disk-mb ${DISK_MB}`
  daemon = await startDaemon()
  sbx = await Sandbox.create({ timeoutMs: 120_000 })
})

after(async () => {
  if (sbx) await sbx.kill().catch(() => {})
  await daemon?.stop()
})

const INSIDE = 'if [ -e /sys/fs/cgroup/cpu.max ]; then read q p < /sys/fs/cgroup/cpu.max;' +
  ' m=$(cat /sys/fs/cgroup/memory.max); else q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us);' +
  ' p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us);' +
  ' m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); fi;' +
  " echo $q $p $m $(nproc) $(awk '/^MemTotal/ {print $2 * 1024}' /proc/meminfo)" +
  ' $(df -B1 --output=size,used / | tail -n1)'

test('getInfo, list and getMetrics report the CPUs, memory and disk the sandbox has', { timeout: 60_000 }, async () => {
  const info = await sbx.getInfo()
  const listed = (await Sandbox.list().nextItems()).find((s) => s.sandboxId === sbx.sandboxId)
  const { text } = await daemon.request('GET', `/sandboxes/${sbx.sandboxId}`)
  const detail = JSON.parse(text)
  const metrics = (await sbx.getMetrics()).at(-1)
  const [q, p, m, nproc, memTotal, dfSize, dfUsed] =
    (await sbx.commands.run(INSIDE)).stdout.trim().split(/\s+/).map(Number)
  const mib = (n) => n * 1024 * 1024
  assert.deepEqual([info.cpuCount, info.memoryMB], [CPUS, MEMORY_MB])
  assert.deepEqual([listed.cpuCount, listed.memoryMB], [CPUS, MEMORY_MB])
  assert.deepEqual([detail.cpuCount, detail.memoryMB, detail.diskSizeMB], [CPUS, MEMORY_MB, DISK_MB])
  assert.deepEqual([q / p, m, nproc, memTotal], [CPUS, mib(MEMORY_MB), CPUS, mib(MEMORY_MB)])
  assert.deepEqual([metrics.cpuCount, metrics.memTotal], [CPUS, mib(MEMORY_MB)])
  assert.deepEqual([metrics.diskTotal, dfSize], [mib(DISK_MB), mib(DISK_MB)])
  // What the disk holds as df counts it (ext4's metadata too); a quiet sandbox, measured a
  // moment apart.
  assert.ok(Math.abs(metrics.diskUsed - dfUsed) < mib(1), `${metrics.diskUsed} vs ${dfUsed}`)
})
