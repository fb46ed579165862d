#!/usr/bin/env bash
# Runs fuzz targets under libFuzzer for a bounded time each (make test-fuzz).
#
#   scripts/fuzz.sh BUILD_DIR SECONDS [NAME...]
#
# BUILD_DIR is a clang build with -Dfuzzing=true (see fuzz/README.md); NAME is a target's name
# without fuzz_ (default: every fuzz/fuzz_*.c). Each target runs from a scratch copy of its
# seed corpus, so the inputs libFuzzer keeps never land in the checkout. A crash, a leak, a
# timeout or running out of memory fails the run: the input is copied to fuzz/out/<name>/
# (ignored by git) and printed in base64, so that a CI log is enough to replay it. Prints the
# number of executions of each target.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A single input slower than this is a finding (a parser that can be made to spin).
INPUT_TIMEOUT_S=10

usage() {
    echo "usage: $0 BUILD_DIR SECONDS [NAME...]" >&2
    exit 2
}

(($# >= 2)) || usage
build=$(cd "$1" && pwd)
seconds=$2
shift 2
[[ $seconds =~ ^[1-9][0-9]*$ ]] || usage
names=("$@")
if ((${#names[@]} == 0)); then
    for f in "$REPO"/fuzz/fuzz_*.c; do
        f=${f##*/fuzz_}
        names+=("${f%.c}")
    done
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sbx-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# Prints the report of target $1 (executable $2, scratch dir $3) and the inputs it saved.
report_failure() {
    local name=$1 exe=$2 dir=$3 out="$REPO/fuzz/out/$1" a
    tail -n 80 "$dir/log" >&2
    mkdir -p "$out"
    for a in "$dir"/artifacts/*; do
        [[ -e $a ]] || continue
        cp "$a" "$out/"
        printf 'fuzz: %s: input %s (reproduce: %s fuzz/out/%s/%s), base64:\n' "$name" \
            "${a##*/}" "${exe#"$REPO"/}" "$name" "${a##*/}" >&2
        base64 -w 76 "$a" >&2
    done
}

failed=()
for name in "${names[@]}"; do
    exe="$build/fuzz/fuzz_$name"
    [[ -x $exe ]] || { echo "fuzz: $exe not built" >&2; exit 1; }
    dir="$scratch/$name"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    cp "$REPO/fuzz/corpus/$name/"* "$dir/corpus/"
    rc=0
    "$exe" -max_total_time="$seconds" -timeout="$INPUT_TIMEOUT_S" -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
    line=$(printf '%-20s %10s executions in %ss, corpus %d -> %d inputs' "$name" "${execs:-?}" \
        "$seconds" "$(ls "$REPO/fuzz/corpus/$name" | wc -l)" "$(ls "$dir/corpus" | wc -l)")
    if ((rc != 0)); then
        report_failure "$name" "$exe" "$dir"
        line+=" FAILED (exit $rc)"
        failed+=("$name")
    fi
    echo "fuzz: $line"
    rm -rf "$dir"
done

if ((${#failed[@]} > 0)); then
    echo "fuzz: findings in: ${failed[*]}" >&2
    exit 1
fi
