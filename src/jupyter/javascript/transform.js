/*
 * The one transform every cell of sbx's JavaScript/TypeScript kernel goes through before it
 * runs, the same pipeline E2B's kernel (its ijavascript fork) uses, so that the same cells
 * behave the same:
 *
 * - TypeScript types are stripped, never checked (a cell with a type error still runs); only
 *   type-only imports are removed, so an import used by a later cell stays.
 * - ES module syntax becomes CommonJS (`import { readFileSync } from 'fs'` is a require()),
 *   with Node's interop (a default import is module.exports) and without "use strict".
 * - Top-level await (topLevelAwait below).
 *
 * The output is a script for vm.runInThisContext whose completion value is the cell's value
 * (a Promise when the cell awaits; the kernel awaits it).
 */
'use strict';

const babel = require('@babel/core');
const presetTypescript = require('@babel/preset-typescript');
const modulesCommonjs = require('@babel/plugin-transform-modules-commonjs');

/*
 * A cell that awaits at top level runs, from the first statement that awaits on, inside an
 * async arrow function called at the end of the cell:
 *
 *     const a = 1; const b = await f(a); b * 2
 * becomes
 *     const a = 1; let b; (async () => { b = await f(a); return b * 2; })()
 *
 * - Its declarations are split: the names are declared at the top level of the cell (let for
 *   let and const, var for var), the initialisers become assignments inside the function, so
 *   that later cells still see the variables. Classes likewise.
 * - Function declarations and imports stay at the top level (both are hoisted anyway), so
 *   later cells see the functions too.
 * - The last statement, if it is an expression other than an assignment, is returned: the
 *   function's promise resolves to the cell's value.
 * - A top-level return is left where it is: it is a syntax error in a cell either way.
 */
function topLevelAwait({ types: t }) {
    function awaitsAtTopLevel(path) {
        if (path.isFunction())
            return false; /* an await in a function belongs to that function */
        if (path.isForOfStatement() && path.node.await)
            return true;
        let found = false;
        path.traverse({
            Function(inner) {
                inner.skip();
            },
            AwaitExpression(inner) {
                found = true;
                inner.stop();
            },
            ForOfStatement(inner) {
                if (inner.node.await) {
                    found = true;
                    inner.stop();
                }
            },
        });
        return found;
    }

    function assignment(target, value) {
        return t.expressionStatement(t.assignmentExpression('=', target, value));
    }

    return {
        name: 'sbx-top-level-await',
        visitor: {
            Program(program) {
                const body = program.get('body');
                const first = body.findIndex(awaitsAtTopLevel);
                if (first < 0)
                    return;
                const kept = body.slice(0, first).map((p) => p.node);
                const hoisted = { let: [], var: [] };
                const moved = [];
                const inner = [];
                for (const stmt of body.slice(first).map((p) => p.node)) {
                    if (t.isVariableDeclaration(stmt)) {
                        const kind = stmt.kind === 'var' ? 'var' : 'let';
                        for (const d of stmt.declarations) {
                            for (const name of Object.keys(t.getBindingIdentifiers(d.id)))
                                hoisted[kind].push(t.variableDeclarator(t.identifier(name)));
                            /* `let x;` needs no assignment, and `var x;` must not reset x. */
                            if (d.init)
                                inner.push(assignment(d.id, d.init));
                        }
                    } else if (t.isClassDeclaration(stmt) && stmt.id) {
                        hoisted.let.push(t.variableDeclarator(t.identifier(stmt.id.name)));
                        inner.push(
                            assignment(t.identifier(stmt.id.name), t.toExpression(stmt)));
                    } else if (t.isFunctionDeclaration(stmt) || t.isImportDeclaration(stmt)) {
                        moved.push(stmt);
                    } else {
                        inner.push(stmt);
                    }
                }
                const last = inner[inner.length - 1];
                if (t.isExpressionStatement(last) && !t.isAssignmentExpression(last.expression))
                    inner[inner.length - 1] = t.returnStatement(last.expression);
                const declarations = Object.entries(hoisted)
                    .filter(([, decls]) => decls.length > 0)
                    .map(([kind, decls]) => t.variableDeclaration(kind, decls));
                const call = t.callExpression(
                    t.arrowFunctionExpression([], t.blockStatement(inner), true), []);
                program.node.body = [...kept, ...moved, ...declarations,
                    t.expressionStatement(call)];
            },
        },
    };
}

const OPTIONS = {
    filename: 'cell.ts', /* parsed as TypeScript whatever the language */
    sourceType: 'module',
    /* A babel.config.js or .babelrc in the user's directory must not change the kernel. */
    babelrc: false,
    configFile: false,
    browserslistConfigFile: false,
    /* Stack traces point at the lines of the cell the user wrote. */
    retainLines: true,
    highlightCode: false,
    presets: [[presetTypescript, { allExtensions: true, onlyRemoveTypeImports: true }]],
    plugins: [[modulesCommonjs, { importInterop: 'node', strictMode: false }], topLevelAwait],
};

/* Returns the script to run, or throws a SyntaxError whose message has no file name and whose
 * frame (the offending lines, marked) is in .frame. */
function transform(code) {
    try {
        return babel.transformSync(code, OPTIONS).code;
    } catch (e) {
        if (e.code !== 'BABEL_PARSE_ERROR' && e.code !== 'BABEL_TRANSFORM_ERROR')
            throw e;
        const [first, ...frame] = String(e.message).split('\n');
        const err = new SyntaxError(first.replace(/^[^:]*cell\.ts: /, ''));
        err.frame = frame.join('\n').replace(/^\n+/, '');
        throw err;
    }
}

module.exports = { transform };
