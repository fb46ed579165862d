/*
 * sbx's JavaScript and TypeScript kernel: `node kernel.js CONNECTION_FILE`, started by
 * src/jupyter/kernel.c for both languages (scripts/setup.sh installs it with its npm
 * packages under /usr/lib/sbx/javascript).
 *
 * It behaves as E2B's kernel (a fork of ijavascript on nel) does, which is what E2B's SDK
 * users see:
 * - every cell goes through transform.js (types stripped unchecked, ES modules as CommonJS,
 *   top-level await) and runs with vm.runInThisContext in this process's global context, so
 *   its declarations persist;
 * - the cell's value, awaited if it is a promise, is the execute_result: text/plain is
 *   util.inspect of it, plus what the object offers through _toMime(), _toHtml(), _toSvg(),
 *   _toPng() and _toJpeg(); undefined shows nothing (ijavascript's --hide-undefined);
 * - `$$` as in nel: $$.html(...), $$.png(...), $$.mime({...}) and the like give the cell's
 *   result, $$.display().html(...) and the like display one; after $$.async() the cell ends
 *   when one of those, $$.done(value), $$.sendResult(value) or $$.sendError(error) is called;
 * - what the cell writes to process.stdout and process.stderr (console.log included) becomes
 *   stream messages, writes of the same tick in one message;
 * - `require` resolves from the kernel's working directory, as in `node -e`.
 *
 * Unlike E2B's kernel, an interrupt (SIGINT, how sbx interrupts every kernel) stops the running
 * cell and keeps the kernel's state: synchronous code through vm's breakOnSigint, a cell
 * waiting on a promise by no longer waiting for it. Output that a child process writes
 * straight to the kernel's stdout or stderr is not relayed (it goes to sbx's kernel log).
 *
 * Jupyter side: the messages sbx's agent sends (kernel_info_request, execute_request) on the
 * shell and control sockets, results on iopub; no heartbeat or stdin sockets, nothing else.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const Module = require('module');
const path = require('path');
const { StringDecoder } = require('string_decoder');
const util = require('util');
const vm = require('vm');

const zmq = require('zeromq');

const { transform } = require('./transform');

const PROTOCOL_VERSION = '5.3';
const DELIMITER = Buffer.from('<IDS|MSG>');
const STREAM_MESSAGE_BYTES = 1 << 20; /* pending output sent at once from this size on */
/* Output not yet sent beyond which more is dropped: code that prints in a loop without ever
 * yielding would otherwise hold all of it in memory until the kernel is killed. */
const OUTPUT_BACKLOG_BYTES = 32 << 20;

function die(message) {
    fs.writeSync(2, `sbx javascript kernel: ${message}\n`);
    process.exit(1);
}

if (process.argv.length !== 3)
    die('usage: kernel.js CONNECTION_FILE');
const connection = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
if (connection.signature_scheme !== 'hmac-sha256')
    die(`unsupported signature scheme ${connection.signature_scheme}`);
const session = crypto.randomUUID();

/* ---- the wire protocol ---- */

function sign(parts) {
    const hmac = crypto.createHmac('sha256', connection.key);
    for (const p of parts)
        hmac.update(p);
    return Buffer.from(hmac.digest('hex'));
}

/* A request, or null when it is malformed or not signed with the connection's key (only the
 * key's holder, sbx's agent, may drive the kernel). */
function decode(frames) {
    const at = frames.findIndex((f) => f.equals(DELIMITER));
    if (at < 0 || frames.length < at + 6)
        return null;
    const parts = frames.slice(at + 2, at + 6);
    const want = sign(parts);
    const got = frames[at + 1];
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want))
        return null;
    try {
        const [header, , , content] = parts.map((p) => JSON.parse(p.toString('utf8')));
        return { identities: frames.slice(0, at), header, content };
    } catch {
        return null;
    }
}

function encode(type, content, parentHeader, identities = []) {
    const header = {
        msg_id: crypto.randomUUID(),
        session,
        username: 'kernel',
        date: new Date().toISOString(),
        msg_type: type,
        version: PROTOCOL_VERSION,
    };
    const parts = [header, parentHeader, {}, content].map((p) => Buffer.from(JSON.stringify(p)));
    return [...identities, DELIMITER, sign(parts), ...parts];
}

/* zeromq.js allows one send in flight per socket: the rest wait here, in order. */
class Outbox {
    constructor(socket) {
        this.socket = socket;
        this.queue = [];
        this.bytes = 0;
        this.sending = false;
    }

    send(frames) {
        this.queue.push(frames);
        this.bytes += frames.reduce((n, f) => n + f.length, 0);
        if (!this.sending)
            this.pump();
    }

    async pump() {
        this.sending = true;
        while (this.queue.length > 0) {
            const frames = this.queue.shift();
            try {
                await this.socket.send(frames);
            } catch (e) {
                fs.writeSync(2, `sbx javascript kernel: send failed: ${e.message}\n`);
            }
            this.bytes -= frames.reduce((n, f) => n + f.length, 0);
        }
        this.sending = false;
        output.reportDropped();
    }
}

let iopub;

function publish(type, content, parentHeader) {
    iopub.send(encode(type, content, parentHeader));
}

/* ---- output of the cells ---- */

/* The execution whose output this is: the running one, else the last one (what a timer of an
 * earlier cell prints belongs to whichever cell is running when it fires, as in ipykernel). */
let current = null;

const output = {
    chunks: [], /* {name, text, parent} in the order written */
    bytes: 0,
    scheduled: false,
    dropped: 0,

    write(name, text) {
        if (text.length === 0)
            return;
        if (iopub.bytes + this.bytes > OUTPUT_BACKLOG_BYTES) {
            this.dropped += Buffer.byteLength(text);
            return;
        }
        const parent = current ? current.header : {};
        const last = this.chunks[this.chunks.length - 1];
        if (last && last.name === name && last.parent === parent)
            last.text += text;
        else
            this.chunks.push({ name, text, parent });
        this.bytes += text.length;
        if (this.bytes >= STREAM_MESSAGE_BYTES) {
            this.flush();
        } else if (!this.scheduled) {
            this.scheduled = true;
            setImmediate(() => this.flush());
        }
    },

    flush() {
        this.scheduled = false;
        for (const c of this.chunks)
            publish('stream', { name: c.name, text: c.text }, c.parent);
        this.chunks = [];
        this.bytes = 0;
    },

    /* Says so on stderr if output was dropped; at the end of each execution, and when the
     * backlog is gone (for what timers printed between executions). */
    reportDropped() {
        if (this.dropped === 0)
            return;
        const text = `\n[${this.dropped} bytes of output were dropped: they were written faster ` +
            'than the kernel could send them]\n';
        this.dropped = 0;
        this.chunks.push({ name: 'stderr', text, parent: current ? current.header : {} });
        this.flush();
    },
};

function captureStream(stream, name) {
    const decoder = new StringDecoder('utf8');
    stream.write = function write(chunk, encoding, callback) {
        if (typeof encoding === 'function') {
            callback = encoding;
            encoding = undefined;
        }
        let text;
        if (typeof chunk !== 'string')
            text = decoder.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        else if (!encoding || /^utf-?8$/i.test(encoding))
            text = chunk;
        else
            text = decoder.write(Buffer.from(chunk, encoding));
        output.write(name, text);
        if (typeof callback === 'function')
            process.nextTick(callback);
        return true;
    };
}

/* ---- what a cell's value shows ---- */

function attempt(fn) {
    try {
        return fn();
    } catch {
        return undefined;
    }
}

/* nel's default: the object's own bundle, then util.inspect and its other representations. */
function toMime(value) {
    if (value === null)
        return { 'text/plain': 'null' };
    /* value's own method, called on it; undefined if it has none or it throws */
    const call = (name) => attempt(() => {
        const method = value[name];
        return typeof method === 'function' ? method.call(value) : undefined;
    });
    const own = call('_toMime');
    const mime = own !== null && typeof own === 'object' ? own : {};
    if (!('text/plain' in mime))
        mime['text/plain'] = attempt(() => util.inspect(value));
    for (const [type, name] of [['text/html', '_toHtml'], ['image/svg+xml', '_toSvg'],
        ['image/png', '_toPng'], ['image/jpeg', '_toJpeg']]) {
        if (!(type in mime)) {
            const data = call(name);
            if (data !== undefined)
                mime[type] = data;
        }
    }
    return mime;
}

function kernelFrame(line) {
    return line.includes('node:vm:') || line.includes(__dirname);
}

/* Error name, value and traceback as nel reports them; the kernel's own frames left out. */
function formatError(error) {
    const isObject = error !== null && (typeof error === 'object' || typeof error === 'function');
    const field = (key) => (isObject ? attempt(() => error[key]) : undefined);
    const ename = field('name') ? String(field('name')) : typeof error;
    const evalue = field('message') ? String(field('message'))
        : attempt(() => util.inspect(error)) ?? '';
    const frame = field('frame');
    const stack = field('stack');
    let traceback = [];
    if (typeof frame === 'string') {
        traceback = [`${ename}: ${evalue}`, frame];
    } else if (typeof stack === 'string') {
        const lines = stack.split('\n');
        /* Node heads the stack of an error thrown through vm with the line that threw it
         * ("file:line", the source, a caret, a blank line): not worth showing if it is ours. */
        if (kernelFrame(lines[0]))
            lines.splice(0, lines.indexOf('') + 1);
        const end = lines.findIndex((l, i) => i > 0 && kernelFrame(l));
        traceback = end < 0 ? lines : lines.slice(0, end);
    }
    return { ename, evalue, traceback };
}

/* ---- executions ---- */

const INTERRUPTED = 'Script execution was interrupted by `SIGINT`';

function isThenable(value) {
    return value !== null && (typeof value === 'object' || typeof value === 'function') &&
        typeof attempt(() => value.then) === 'function';
}

class Execution {
    constructor(header, silent) {
        this.header = header;
        this.silent = silent;
        this.async = false;    /* $$.async(): the cell ends when a $$ function ends it */
        this.resultGiven = false; /* by a $$ function: the cell's own value is not shown */
        this.finish = null;    /* settles run()'s wait for the cell's end */
    }

    /* Runs code; resolves to { value }, value being what to show (undefined for none): the
     * cell's value, awaited if it is a promise or another thenable. Wrapped, so that no value
     * is ever taken for a promise to wait for once more. */
    async run(code) {
        const script = transform(code);
        const value = vm.runInThisContext(script, {
            breakOnSigint: true,
            importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
        });
        const thenable = isThenable(value);
        if (!thenable && !this.async)
            return { value };
        const ended = new Promise((resolve, reject) => {
            this.finish = { resolve: (v) => resolve({ value: v }), reject };
        });
        if (thenable)
            Promise.resolve(value).then((v) => this.async || this.finish.resolve(v),
                (e) => this.finish.reject(e));
        return ended;
    }

    interrupt() {
        if (this.finish)
            this.finish.reject(new Error(INTERRUPTED));
    }

    /* What a $$ function ends the cell with: bundle as its main result, or error. A cell still
     * running synchronously goes on, but its own value is no longer shown. */
    endWith(bundle, error) {
        this.async = false;
        this.resultGiven = true;
        if (error === undefined && bundle !== undefined) {
            try {
                this.sendMime(bundle, true);
            } catch (e) {
                error = e; /* a bundle that is no JSON: the cell fails with that */
            }
        }
        if (this.finish === null) {
            if (error !== undefined)
                throw error;
        } else if (error !== undefined) {
            this.finish.reject(error);
        } else {
            this.finish.resolve(undefined);
        }
    }

    sendMime(bundle, main) {
        if (this.silent)
            return;
        output.flush();
        if (main) {
            publish('execute_result', { execution_count: executionCount, data: bundle,
                metadata: {} }, this.header);
        } else {
            publish('display_data', { data: bundle, metadata: {}, transient: {} }, this.header);
        }
    }
}

let executionCount = 0;

async function execute(request, reply) {
    const { code = '', silent = false } = request.content;
    const execution = new Execution(request.header, silent);
    output.flush();
    current = execution;
    publish('status', { execution_state: 'busy' }, request.header);
    if (!silent && request.content.store_history !== false)
        executionCount++;
    if (!silent)
        publish('execute_input', { code, execution_count: executionCount }, request.header);
    let content;
    try {
        const { value } = await execution.run(code);
        if (!execution.resultGiven && value !== undefined)
            execution.sendMime(toMime(value), true);
        content = { status: 'ok', execution_count: executionCount, payload: [],
            user_expressions: {} };
    } catch (e) {
        const error = formatError(e);
        output.flush();
        if (!silent)
            publish('error', error, request.header);
        content = { status: 'error', execution_count: executionCount, ...error };
    }
    output.reportDropped();
    output.flush();
    reply('execute_reply', content);
    publish('status', { execution_state: 'idle' }, request.header);
}

function kernelInfo(request, reply) {
    publish('status', { execution_state: 'busy' }, request.header);
    reply('kernel_info_reply', {
        status: 'ok',
        protocol_version: PROTOCOL_VERSION,
        implementation: 'sbx-javascript',
        implementation_version: '1.0',
        language_info: {
            name: 'javascript',
            version: process.versions.node,
            mimetype: 'application/javascript',
            file_extension: '.js',
        },
        banner: `Node.js ${process.version} (sbx)`,
        help_links: [],
    });
    publish('status', { execution_state: 'idle' }, request.header);
}

/* Serves one socket's requests one after another. */
async function serve(socket, handlers) {
    const replies = new Outbox(socket);
    for await (const frames of socket) {
        const request = decode(frames);
        const handler = request && handlers[request.header.msg_type];
        if (!handler)
            continue;
        const reply = (type, content) =>
            replies.send(encode(type, content, request.header, request.identities));
        try {
            await handler(request, reply);
        } catch (e) {
            /* A message the kernel could not encode (say, a BigInt in a $$.json() bundle): the
             * request gets no reply, the kernel serves the next one. */
            fs.writeSync(2, `sbx javascript kernel: ${request.header.msg_type}: ${e.message}\n`);
        }
    }
}

/* ---- the global context the cells run in ---- */

function setUpGlobals() {
    /* As for `node -e`: module, exports and require of a file "[eval]" in the working
     * directory, so that require() finds the user's node_modules, not the kernel's. */
    const evalPath = path.join(process.cwd(), '[eval]');
    const evalModule = new Module(evalPath);
    evalModule.filename = evalPath;
    evalModule.paths = Module._nodeModulePaths(process.cwd());
    Object.assign(globalThis, {
        module: evalModule,
        exports: evalModule.exports,
        require: Module.createRequire(evalPath),
        __filename: '[eval]',
        __dirname: '.',
    });

    /* nel's $$: the MIME functions end the cell with their argument as its result, those of
     * $$.display() only display it; a promise given to one makes the cell wait for it. */
    const settle = (arg, use) => {
        const execution = current;
        if (!isThenable(arg))
            return use(execution, arg);
        execution.async = true;
        Promise.resolve(arg).then((v) => use(execution, v),
            (e) => execution.endWith(undefined, e));
        return undefined;
    };
    const mimeFunctions = (send) => ({
        mime: (bundle) => send(bundle),
        text: (text) => send(text, 'text/plain'),
        html: (html) => send(html, 'text/html'),
        svg: (svg) => send(svg, 'image/svg+xml'),
        png: (png) => send(png, 'image/png'),
        jpeg: (jpeg) => send(jpeg, 'image/jpeg'),
        json: (json) => send(json, 'application/json'),
    });
    const bundleOf = (data, type) => (type ? { [type]: data } : data);
    globalThis.$$ = {
        ...mimeFunctions((data, type) =>
            settle(data, (execution, v) => execution.endWith(bundleOf(v, type)))),
        display: () => mimeFunctions((data, type) =>
            current.sendMime(bundleOf(data, type), false)),
        async: (on = true) => {
            current.async = !!on;
            return current.async;
        },
        done: (value) => current.endWith(value === undefined ? undefined : toMime(value)),
        sendResult: (value) => settle(value, (execution, v) =>
            execution.endWith(v === undefined ? undefined : toMime(v))),
        sendError: (error) => settle(error, (execution, e) => execution.endWith(undefined, e)),
    };

    captureStream(process.stdout, 'stdout');
    captureStream(process.stderr, 'stderr');
    /* An error thrown by a callback of some cell is that cell's business, not the kernel's
     * end: report it as output, as nel does. */
    process.on('uncaughtException', (e) => {
        const { ename, evalue, traceback } = formatError(e);
        output.write('stderr', `${traceback.length ? traceback.join('\n') : `${ename}: ${evalue}`}\n`);
    });
    process.on('SIGINT', () => current && current.interrupt());
}

async function main() {
    const url = (port) => `${connection.transport}://${connection.ip}:${port}`;
    iopub = new Outbox(new zmq.Publisher());
    const shell = new zmq.Router();
    const control = new zmq.Router();
    await Promise.all([iopub.socket.bind(url(connection.iopub_port)),
        shell.bind(url(connection.shell_port)), control.bind(url(connection.control_port))]);
    setUpGlobals();
    serve(shell, { kernel_info_request: kernelInfo, execute_request: execute });
    serve(control, { kernel_info_request: kernelInfo });
}

main().catch((e) => die(e.stack || String(e)));
