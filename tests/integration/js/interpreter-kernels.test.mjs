// What the kernels show and how they run, as in E2B's code interpreter (issue 12), through the
// official @e2b/code-interpreter JS SDK: the stdout chunks, result texts and env var behaviour
// E2B's own suites (e2b-dev/code-interpreter js/tests) assert. The Python SDK side, with more
// detail, is tests/integration/py/test_interpreter_kernels.py.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from '@e2b/code-interpreter'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 180_000 }
let daemon
let sbx

before(async () => {
  daemon = await startDaemon()
  sbx = await Sandbox.create({ timeoutMs: 600_000, envs: { TEST_ENV_VAR: 'supertest' } })
})

after(async () => {
  if (sbx) await sbx.kill().catch(() => {})
  await daemon?.stop()
})

const stdout = (execution) => execution.logs.stdout

describe('users and working directories', () => {
  test('kernels run as root in /home/user; a context may use /root', T, async () => {
    assert.deepEqual(stdout(await sbx.runCode('whoami; pwd', { language: 'bash' })),
      ['root\n', '/home/user\n'])
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/root' })
    const last = (await sbx.listCodeContexts()).at(-1)
    assert.deepEqual([last.id, last.language, last.cwd], [ctx.id, 'python', '/root'])
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/root')
  })
})
