"""First call per language: in a fresh sandbox, the wall time of the first run_code of each
kernel language (the kernel's start included: only Python's kernel is started ahead), through
the official e2b_code_interpreter SDK, against the second run_code of the same code in the same
context (the warm round trip), measured in the same run.

With --baseline-bin, a second daemon runs another sbx binary (say, a build of the previous
commit) and the two are measured alternately, sandbox by sandbox, so that both see the same
load; each first call is then also compared with the baseline's. With --no-pool the same is
done against a daemon without warm pools: a pooled sandbox must not slow any language's first
call (issue 8).

    .venv/bin/python bench/bench_first_call.py [N] [--baseline-bin PATH] [--no-pool] [LANG ...]
                                               (root; default N=5, every language)
"""

import argparse
import os
import time

from common import Daemon, report

from e2b_code_interpreter import Sandbox

# One small cell per language, with a value a user would look at; the same cell runs twice in
# a context, so it declares nothing.
CODE = {
    "python": ("1 + 1", "2"),
    "javascript": ("1 + 1", "2"),
    "typescript": ("(1 as number) + 1", "2"),
    "java": ("1 + 1", "2"),
    "r": ("1 + 1", "[1] 2"),
    "bash": ("echo 2", None),
}


def run(sbx, lang):
    code, want = CODE[lang]
    t0 = time.perf_counter()
    ex = sbx.run_code(code, language=lang, timeout=120)
    ms = (time.perf_counter() - t0) * 1000.0
    assert ex.error is None, (lang, ex.error)
    got = ex.results[0].text if ex.results else "".join(ex.logs.stdout).strip()
    assert want is None or got == want, (lang, got)
    return ms


def measure(daemon, langs, first, warm):
    sbx = Sandbox.create(timeout=300, api_key=daemon.key, api_url=daemon.url,
                         sandbox_url=daemon.url)
    try:
        # The default Python kernel starts with the sandbox: wait for it, so that the other
        # languages' first calls do not share the CPU with its start.
        sbx.run_code("0")
        for lang in langs:
            first[lang].append(run(sbx, lang))
            warm[lang].append(run(sbx, lang))
    finally:
        sbx.kill()


def start_daemon(binary=None, *args):
    """A Daemon of the binary given (SBX_BIN or build/sbx if None)."""
    saved = os.environ.get("SBX_BIN")
    if binary:
        os.environ["SBX_BIN"] = binary
    try:
        return Daemon("--memory-mb", "1024", *args)
    finally:
        if saved is None:
            os.environ.pop("SBX_BIN", None)
        else:
            os.environ["SBX_BIN"] = saved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=5)
    ap.add_argument("langs", nargs="*", default=list(CODE))
    ap.add_argument("--baseline-bin")
    ap.add_argument("--no-pool", action="store_true")
    args = ap.parse_intermixed_args()
    daemons = {"sbx": start_daemon()}
    try:
        if args.baseline_bin:
            daemons["baseline"] = start_daemon(args.baseline_bin)
        if args.no_pool:
            daemons["no pool"] = start_daemon(None, "--pool", "code-interpreter-v1=0")
        runs = {name: ({lang: [] for lang in args.langs}, {lang: [] for lang in args.langs})
                for name in daemons}
        for _ in range(args.n):
            for name, d in daemons.items():
                measure(d, args.langs, *runs[name])
    finally:
        for d in daemons.values():
            d.close()
    print(f"# first run_code per language in a fresh sandbox, N={args.n}")
    for lang in args.langs:
        first, warm = runs["sbx"][0][lang], runs["sbx"][1][lang]
        report(f"{lang}: warm run_code", warm)
        report(f"{lang}: first run_code", first, "warm", warm)
        for name in ("baseline", "no pool"):
            if name in runs:
                base = runs[name][0][lang]
                report(f"{lang}: first run_code ({name})", base)
                report(f"{lang}: first run_code", first, name.replace(" ", "_"), base)


if __name__ == "__main__":
    main()
