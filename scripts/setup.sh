#!/usr/bin/env bash
# Install what sbx needs on a fresh Debian 12 machine. Idempotent: a re-run only checks.
#
#   scripts/setup.sh build   Debian packages needed to build and run the daemon
#   scripts/setup.sh test    the same, plus the Python venv (.venv) and the JS test packages
#
# Run as root (apt-get). The venv and npm steps need no root and are skipped when their
# inputs (requirements.txt, package-lock.json) have not changed since the last install.
set -euo pipefail

# Debian packages: the one list. Everything here is installed in both modes.
APT_PACKAGES=(
    build-essential meson ninja-build pkg-config clang
    libuv1-dev libjansson-dev libhttp-parser-dev libsqlite3-dev libseccomp-dev libssl-dev
    libzmq3-dev libcurl4-openssl-dev zlib1g-dev
    libnftables-dev nftables # the sandbox network's filtering and NAT (src/sandbox/nft.c)
    sudo curl git util-linux iproute2 procps
    e2fsprogs # mke2fs formats the per-sandbox disk images
    lxcfs # /proc/meminfo, cpuinfo... of each sandbox's own limits
    clang-format-14 # the formatting check of `make test`
    python3 python3-pip python3-venv
    mmdebstrap # builds the base template's Debian root (scripts/templates.sh)
    skopeo umoci # pull and unpack container images, fromImage and sbx template import
)
# Installed only when `node` is absent (these machines usually ship Node 20 with npm).
APT_NODE_PACKAGES=(nodejs npm)
# Test mode only: the cgroup v2 guest of scripts/vm/ (built with debootstrap, run by QEMU);
# clang with the libFuzzer runtime for `make test-fuzz`; promtool (in prometheus) checks
# /metrics; systemd-analyze (systemd) checks the unit file; crun and bwrap are the baselines
# of bench/bench_engine.py; the network tests' and benchmarks' own hosts and services: a
# throughput meter, a resolver for test domains, a SOCKS5 server, and curl.
APT_TEST_PACKAGES=(qemu-system-x86 debootstrap xz-utils clang-14 libclang-rt-14-dev prometheus systemd
    crun bubblewrap iperf3 dnsmasq-base microsocks curl
    docker-registry) # the image tests' own local registry (test_images.py)

# apt-get update again only when the package lists are older than this.
APT_UPDATE_MAX_AGE_S=$((6 * 3600))
APT_STAMP=/var/lib/apt/periodic/sbx-setup-update-stamp

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"
PY_REQUIREMENTS="$REPO/tests/integration/py/requirements.txt"
VENV_SDK1="$REPO/.venv-sdk1"
PY_REQUIREMENTS_SDK1="$REPO/tests/integration/py/requirements-sdk1.txt"
JS_DIR="$REPO/tests/integration/js"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 build|test" >&2
    exit 2
}

# Prints the packages of "$@" that are not installed.
missing_packages() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
        [[ $status == ii* ]] || printf '%s\n' "$p"
    done
}

apt_update_if_stale() {
    local now age
    now=$(date +%s)
    if [[ -f $APT_STAMP ]]; then
        age=$((now - $(stat -c %Y "$APT_STAMP")))
        if ((age < APT_UPDATE_MAX_AGE_S)); then
            log "apt lists updated ${age}s ago, not updating"
            return
        fi
    fi
    log "apt-get update"
    apt-get update -q
    mkdir -p "$(dirname "$APT_STAMP")"
    touch "$APT_STAMP"
}

install_apt_packages() {
    local wanted=("${APT_PACKAGES[@]}")
    if [[ $1 == test ]]; then
        wanted+=("${APT_TEST_PACKAGES[@]}")
        command -v node >/dev/null 2>&1 || wanted+=("${APT_NODE_PACKAGES[@]}")
    fi
    local missing
    mapfile -t missing < <(missing_packages "${wanted[@]}")
    if ((${#missing[@]} == 0)); then
        log "Debian packages: all ${#wanted[@]} installed"
        return
    fi
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run as root"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_update_if_stale
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        # Stale lists (a package version vanished from the mirror): refresh once, retry.
        rm -f "$APT_STAMP"
        apt_update_if_stale
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

file_hash() {
    sha256sum "$@" | sha256sum | cut -d' ' -f1
}

# A venv at $1 with the requirements file $2, reinstalled only when that file changes. The
# 2.x SDKs (the tests' own) and the 1.x ones (the seed quickstart's) need one each.
setup_venv() {
    local venv=$1 requirements=$2 stamp="$1/.sbx-requirements.sha256" want
    if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating $venv"
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv"
    fi
    want=$(file_hash "$requirements")
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "Python venv ${venv#"$REPO"/} up to date"
        return
    fi
    log "pip install -r ${requirements#"$REPO"/}"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    printf '%s\n' "$want" >"$stamp"
}

setup_js() {
    command -v node >/dev/null 2>&1 || die "node not found"
    command -v npm >/dev/null 2>&1 || die "npm not found"
    # The e2b npm packages declare node >=20.18.1 (Debian 12's own nodejs is 18).
    if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number);
                  process.exit(a>20||(a===20&&b>=18)?0:1)'; then
        log "warning: node $(node --version) is older than the e2b SDK wants (>=20.18.1)"
    fi
    local stamp="$JS_DIR/node_modules/.sbx-lock.sha256" want inputs=("$JS_DIR/package.json")
    [[ -f $JS_DIR/package-lock.json ]] && inputs+=("$JS_DIR/package-lock.json")
    want=$(file_hash "${inputs[@]}")
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "JS test packages up to date"
        return
    fi
    if [[ -f $JS_DIR/package-lock.json ]]; then
        log "npm ci in ${JS_DIR#"$REPO"/}"
        (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    else
        log "npm install in ${JS_DIR#"$REPO"/}"
        (cd "$JS_DIR" && npm install --no-audit --no-fund --loglevel=error)
    fi
    # Hash again: npm install may just have written package-lock.json.
    inputs=("$JS_DIR/package.json" "$JS_DIR/package-lock.json")
    file_hash "${inputs[@]}" >"$stamp"
}

# ---- Built-in templates ---------------------------------------------------------------------
# Sandboxes run on the layers of the built-in templates (base, code-interpreter), built from
# templates/ into the host-wide layer cache once per definition; `sbx serve` imports them.
build_templates() {
    [[ $(id -u) == 0 ]] || die "building the templates' layers needs root"
    log "built-in templates (the first build takes several minutes; see README)"
    "$REPO/scripts/templates.sh" build
}

main() {
    (($# == 1)) || usage
    case $1 in
    build)
        install_apt_packages build
        build_templates
        ;;
    test)
        install_apt_packages test
        build_templates
        setup_venv "$VENV" "$PY_REQUIREMENTS"
        setup_venv "$VENV_SDK1" "$PY_REQUIREMENTS_SDK1"
        setup_js
        ;;
    *) usage ;;
    esac
    log "done ($1)"
}

main "$@"
