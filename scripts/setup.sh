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
    # Kernels of the code interpreter (run inside sandboxes, which see the host's /usr).
    python3-ipykernel python3-numpy python3-pandas python3-matplotlib r-cran-irkernel
    openjdk-17-jdk-headless # java and JShell for the Java kernel; javac builds it
)
# Installed only when `node` is absent (these machines usually ship Node 20 with npm).
APT_NODE_PACKAGES=(nodejs npm)
# Test mode only: the cgroup v2 guest of scripts/vm/ (built with debootstrap, run by QEMU);
# clang with the libFuzzer runtime for `make test-fuzz`; promtool (in prometheus) checks
# /metrics; systemd-analyze (systemd) checks the unit file; crun and bwrap are the baselines
# of bench/bench_engine.py; the network tests' and benchmarks' own hosts and services: a
# throughput meter, a resolver for test domains, a SOCKS5 server, and curl.
APT_TEST_PACKAGES=(qemu-system-x86 debootstrap xz-utils clang-14 libclang-rt-14-dev prometheus systemd
    crun bubblewrap iperf3 dnsmasq-base microsocks curl)

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

# ---- Jupyter kernels for the code interpreter ---------------------------------------------
# Needed in both modes: sandboxes run them. Sandboxes see the host's /usr read-only but not
# /usr/local, so registry packages go under /usr/lib/sbx (src/jupyter/kernel.h points the
# kernelspecs there). Each part is reinstalled only when its package list changes.
KERNEL_PREFIX=/usr/lib/sbx
# Installed without dependencies: their Jupyter stack, numpy and matplotlib come from Debian.
KERNEL_PY_NODEPS=(e2b-charts==1.0.0 bash_kernel==0.10.0)
# Installed with dependencies (small, pure Python or wheels): what the two above need beyond
# Debian's packages. e2b-charts builds on pydantic 2 (Debian 12 has 1.10).
KERNEL_PY_DEPS=('pydantic>=2.9,<3' 'pexpect>=4.8' 'filetype>=1.2')
# The JavaScript/TypeScript kernel (src/jupyter/javascript: kernel.js, transform.js) and its
# npm packages, pinned by its package-lock.json: Babel, for the transform E2B's kernel applies,
# and zeromq (its prebuilt binaries come in the npm package).
JS_KERNEL_SRC=src/jupyter/javascript
# The Java kernel (src/jupyter/java/SbxJavaKernel.java) runs on jjava-jupyter's Jupyter
# plumbing; these jars are it and its runtime dependencies, from Maven Central, with their
# SHA-256. (The JJava kernel proper, jjava-kernel, is not served by the registry here.)
MAVEN_CENTRAL=https://repo1.maven.org/maven2
KERNEL_JAVA_JARS=(
    "org.dflib.jjava:jjava-jupyter:1.0-a6 9d158a68166abd4ea7bcd7d4b7c404c51fc8f3d013ba1c085997f454e4f64080"
    "com.google.code.gson:gson:2.11.0 57928d6e5a6edeb2abd3770a8f95ba44dce45f3b23b7a9dc2b309c581552a78b"
    "org.zeromq:jeromq:0.6.0 4784ff6d6e91b8eecd917b73d07b161c19a808ef870a5bdb760515bb67e208d3"
    "eu.neilalexander:jnacl:1.0.0 4accc9d2a56a6dd5198ec5e1c5c05a091da563bccd346fd6578edc083152beaa"
    "org.slf4j:slf4j-api:2.0.17 7b751d952061954d5abfed7181c1f645d336091b679891591d63329c622eb832"
)
JAVA_KERNEL_SRC=src/jupyter/java/SbxJavaKernel.java
KERNEL_LAYOUT=2 # bump when the install commands change, so that setup redoes them

install_kernels() {
    local py="$KERNEL_PREFIX/python" want
    [[ $(id -u) == 0 ]] || die "installing kernels under $KERNEL_PREFIX needs root"
    umask 022 # world-readable: kernels run as sandbox root, commands as user
    want=$(printf '%s\n' "$KERNEL_LAYOUT" "${KERNEL_PY_NODEPS[@]}" "${KERNEL_PY_DEPS[@]}" | sha256sum | cut -d' ' -f1)
    if [[ -f $py/.sbx-packages.sha256 && $(cat "$py/.sbx-packages.sha256") == "$want" ]]; then
        log "Python kernel packages up to date"
    else
        log "pip install --target $py ${KERNEL_PY_NODEPS[*]} ${KERNEL_PY_DEPS[*]}"
        rm -rf "$py.new"
        local pip=(/usr/bin/python3 -m pip install -q --disable-pip-version-check
            --root-user-action=ignore --no-warn-script-location --target "$py.new")
        "${pip[@]}" --no-deps "${KERNEL_PY_NODEPS[@]}"
        "${pip[@]}" "${KERNEL_PY_DEPS[@]}"
        printf '%s\n' "$want" >"$py.new/.sbx-packages.sha256"
        rm -rf "$py" && mv "$py.new" "$py"
    fi
    # Our IPython extension (e2b/chart and e2b/data formatters): always copied, it is ours.
    install -m 0644 "$REPO/src/jupyter/python/sbx_e2b.py" "$py/sbx_e2b.py"

    install_java_kernel
    install_javascript_kernel
}

# npm ci of the kernel's lock into $KERNEL_PREFIX/javascript, redone when the lock changes;
# the kernel's own files are always copied.
install_javascript_kernel() {
    local dir="$KERNEL_PREFIX/javascript" src="$REPO/$JS_KERNEL_SRC" want
    if ! command -v npm >/dev/null 2>&1; then
        log "warning: npm not found; JavaScript/TypeScript kernel not installed"
        return
    fi
    want=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)
    if [[ -f $dir/.sbx-packages.sha256 && $(cat "$dir/.sbx-packages.sha256") == "$want" ]]; then
        log "JavaScript kernel packages up to date"
    else
        log "npm ci in $dir"
        rm -rf "$dir.new"
        mkdir -p "$dir.new"
        install -m 0644 "$src/package.json" "$src/package-lock.json" "$dir.new/"
        (cd "$dir.new" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
        printf '%s\n' "$want" >"$dir.new/.sbx-packages.sha256"
        rm -rf "$dir" && mv "$dir.new" "$dir"
    fi
    install -m 0644 "$src/kernel.js" "$src/transform.js" "$dir/"
}

# Downloads the jars, compiles our kernel against them into $KERNEL_PREFIX/java and records a
# class-data archive of a warm-up run (about a third off the kernel's start). Redone when the
# jars, the source or the JDK change.
install_java_kernel() {
    local dir="$KERNEL_PREFIX/java" want entry coord sum g a v path jar cp=() manifest
    if [[ ! -x /usr/bin/javac ]]; then
        log "warning: javac not found; Java kernel not installed"
        return
    fi
    want=$( (printf '%s\n' "$KERNEL_LAYOUT" "${KERNEL_JAVA_JARS[@]}"
        /usr/bin/java -version 2>&1
        cat "$REPO/$JAVA_KERNEL_SRC") | sha256sum | cut -d' ' -f1)
    if [[ -f $dir/.sbx-packages.sha256 && $(cat "$dir/.sbx-packages.sha256") == "$want" ]]; then
        log "Java kernel up to date"
        return
    fi
    log "building the Java kernel in $dir"
    rm -rf "$dir.new"
    mkdir -p "$dir.new/lib" "$dir.new/classes"
    for entry in "${KERNEL_JAVA_JARS[@]}"; do
        read -r coord sum <<<"$entry"
        IFS=: read -r g a v <<<"$coord"
        jar="$a-$v.jar"
        path="${g//.//}/$a/$v/$jar"
        curl -fsSL --retry 3 -o "$dir.new/lib/$jar" "$MAVEN_CENTRAL/$path"
        echo "$sum  $dir.new/lib/$jar" | sha256sum -c --quiet - || die "checksum mismatch: $jar"
        cp+=("lib/$jar")
    done
    (cd "$dir.new" && /usr/bin/javac -nowarn -XDsuppressNotes --release 17 \
        -cp "$(IFS=:; echo "${cp[*]}")" -d classes "$REPO/$JAVA_KERNEL_SRC" 2>&1 |
        grep -v 'internal proprietary API\|sun\.misc\.Signal\|^ *^\|^[0-9]* warnings\?$' >&2 || true)
    [[ -f $dir.new/classes/sbx/kernel/SbxJavaKernel.class ]] || die "javac failed"
    manifest="$dir.new/MANIFEST.MF"
    printf 'Main-Class: sbx.kernel.SbxJavaKernel\nClass-Path: %s\n' "${cp[*]}" >"$manifest"
    /usr/bin/jar --create --file "$dir.new/sbx-java-kernel.jar" --manifest "$manifest" \
        -C "$dir.new/classes" .
    rm -rf "$dir.new/classes" "$manifest"
    # The archive is only valid for the same jar path, so record it where the jar will live:
    # swap first, then record (a failure leaves a kernel that simply starts slower).
    rm -rf "$dir" && mv "$dir.new" "$dir"
    /usr/bin/java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -XX:ArchiveClassesAtExit="$dir/kernel.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off \
        -jar "$dir/sbx-java-kernel.jar" --warmup >/dev/null 2>&1 ||
        log "warning: no class-data archive for the Java kernel (it will start slower)"
    chmod -R a+rX "$dir"
    printf '%s\n' "$want" >"$dir/.sbx-packages.sha256"
}

main() {
    (($# == 1)) || usage
    case $1 in
    build)
        install_apt_packages build
        install_kernels
        ;;
    test)
        install_apt_packages test
        install_kernels
        setup_venv "$VENV" "$PY_REQUIREMENTS"
        setup_venv "$VENV_SDK1" "$PY_REQUIREMENTS_SDK1"
        setup_js
        ;;
    *) usage ;;
    esac
    log "done ($1)"
}

main "$@"
