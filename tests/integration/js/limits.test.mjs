// A sandbox sees its own limits (issue 12, item 6), through the official JS SDKs: /proc's
// memory, CPU, uptime and load files, nproc and Node's os.cpus() show the sandbox's cgroup
// (512 MiB and one CPU on the default daemon), its cgroup is readable and read-only, and the
// code interpreter's six kernels each start in one 512 MiB sandbox or say they ran out of
// memory. The Python side is tests/integration/py/test_sandbox_limits.py.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import { after, before, test } from 'node:test'

import { Sandbox as CodeInterpreter } from '@e2b/code-interpreter'
import { Sandbox } from 'e2b'

import { startDaemon } from './daemon.mjs'

let daemon

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  await daemon?.stop()
})

const run = async (sbx, cmd, opts) => {
  try {
    return await sbx.commands.run(cmd, opts)
  } catch (e) {
    if (e.result) return e.result
    throw e
  }
}

test('/proc, nproc and /sys/fs/cgroup show the sandbox, not the host', { timeout: 120_000 }, async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    const r = await run(sbx, "awk '/^MemTotal/ {print $2}' /proc/meminfo; nproc;" +
      ' grep -c ^processor /proc/cpuinfo; grep -c "^cpu[0-9]" /proc/stat;' +
      " awk '{print int($1)}' /proc/uptime; cut -d' ' -f4 /proc/loadavg;" +
      ' cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes;' +
      ` node -e 'console.log(require("os").cpus().length)'`)
    const [memKb, nproc, cpuinfo, stat, uptime, load, limit, nodeCpus] = r.stdout.trim().split('\n')
    assert.deepEqual([memKb, nproc, cpuinfo, stat, limit, nodeCpus],
      [String(512 * 1024), '1', '1', '1', String(512 * 1024 * 1024), '1'], r.stdout)
    assert.ok(Number(uptime) < os.uptime(), `uptime ${uptime} is the host's`)
    // Runnable/total tasks: the sandbox's few, not the host's.
    const hostTasks = Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[3].split('/')[1])
    assert.ok(Number(load.split('/')[1]) < Math.min(50, hostTasks), `${load} vs ${hostTasks}`)
    const w = await run(sbx, 'for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes;' +
      ' do [ -e $f ] && echo 1 > $f; done', { user: 'root' })
    assert.notEqual(w.exitCode, 0)
    assert.match(w.stderr, /Read-only file system/)
  } finally {
    await sbx.kill()
  }
})

const SIX_KERNELS = {
  python: ['x = 1; x + 1', '2'],
  javascript: ['1 + 1', '2'],
  typescript: ['const n: number = 2; n', '2'],
  r: ['1 + 1', '[1] 2'],
  java: ['1 + 1', '2'],
  bash: ['echo 2', '2'],
}

test('six kernels in one 512 MiB sandbox: each works or says it ran out of memory', { timeout: 400_000 }, async () => {
  const sbx = await CodeInterpreter.create({ timeoutMs: 400_000 })
  try {
    const start = Date.now()
    for (const [language, [code, want]] of Object.entries(SIX_KERNELS)) {
      const t = Date.now()
      const ex = await sbx.runCode(code, { language, timeoutMs: 120_000 })
      const got = language === 'bash' ? ex.logs.stdout.join('').trim() : ex.results[0]?.text
      // Times for the report; the machine is shared, so none is asserted.
      console.log(`${language}: ${(Date.now() - t) / 1000} s, ${got}, error ${ex.error?.value}`)
      if (ex.error) assert.match(`${ex.error.name} ${ex.error.value}`, /out of memory/, language)
      else assert.equal(got, want, language)
    }
    console.log(`six kernels one after another: ${(Date.now() - start) / 1000} s`)
  } finally {
    await sbx.kill()
  }
})
