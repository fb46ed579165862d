#!/usr/bin/env bash
# Runs the cgroup-dependent tests on a pure cgroup v2 kernel, in a QEMU guest (KVM when the
# host offers it, software emulation otherwise). The dev and CI machines of this project are
# hybrid (v1 controllers), so without this the v2 backend of src/sandbox/cgroup.c would
# never run.
#
#   scripts/vm/run.sh [BUILD_DIR]   host: boot the guest, run the tests, exit with their status
#   scripts/vm/run.sh --guest       guest half, started by the guest's init (image.sh)
#
# The guest is a Debian 12 root image (scripts/vm/image.sh, cached under $SBX_VM_CACHE) with
# this checkout shared over 9p at the same path, so it runs the binaries of BUILD_DIR and the
# Python venv of the host. It boots once per kernel (KERNELS), with cgroup_no_v1=all: every
# controller is on the unified hierarchy, as on current systemd distributions.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${SBX_VM_CACHE:-/var/cache/sbx/vm}
TIMEOUT_S=${SBX_VM_TIMEOUT:-1800}
MEMORY_MB=3072
# The image's kernels (image.sh): the newest Debian has, and Debian 12's own 6.1.
KERNELS=${SBX_VM_KERNELS:-current debian12}
RESULT_TAG="sbx-vm: tests exited with status"

log() { printf 'vm: %s\n' "$*" >&2; }

# The tests, as the guest runs them: the sandbox runtime's unit tests, then the security
# probes (pids and memory limits, OOM reporting, isolation), the lifecycle, metrics and
# restart suites, and what a sandbox sees of its own limits (lxcfs, the cgroup view),
# through the real SDK and daemon. The guest has the base template's layer
# only (image_dir): its daemons keep no code-interpreter pool, and the tests marked
# code_interpreter are left to the host's lane, as are those marked internet (the guest has no
# network beyond its own namespaces).
guest_tests() {
    local build=$1
    "$build/tests/unit/test_sandbox"
    "$build/tests/unit/test_spawner"
    SBX_POOL=code-interpreter-v1=0 SBX_BIN="$build/sbx" \
        "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider -q \
        -m "not code_interpreter and not internet" "$REPO/tests/security" "$REPO/tests/integration/py/test_lifecycle.py" \
        "$REPO/tests/integration/py/test_restart.py" \
        "$REPO/tests/integration/py/test_sandbox_limits.py::test_a_sandbox_sees_its_own_memory_and_cpus"
}

guest() {
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
    mkdir -p /mnt/repo
    mount --bind "$REPO" /mnt/repo # a handle on the checkout before /tmp and /run are covered
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    # A checkout under /tmp or /run (CI clones to /tmp) is hidden now: bind it back on top.
    if [[ ! -f $REPO/scripts/vm/run.sh ]]; then
        mkdir -p "$REPO"
        mount --bind /mnt/repo "$REPO"
    fi
    ip link set lo up
    hostname sbx-vm
    echo "sbx-vm: kernel $(uname -r), cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    local rc=0
    (cd "$REPO" && guest_tests "$REPO/${SBX_BUILD:-build}") || rc=$?
    echo "$RESULT_TAG $rc"
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}

# Prints the directory of a built image, building it first when the cache has none for
# this version of image.sh and of the base template's layer (built by setup: templates.sh),
# which the image carries for the guest's sandboxes.
image_dir() {
    local key dir layer
    layer=${SBX_LAYER_CACHE:-/var/cache/sbx/layers}/$("$REPO/scripts/templates.sh" key base)
    [[ -f $layer/info ]] || { log "no base layer at $layer: run scripts/templates.sh build"; return 1; }
    key=$( (sha256sum "$REPO/scripts/vm/image.sh"; echo "$layer") | sha256sum | cut -c1-16)
    dir=$CACHE/$key
    if [[ ! -f $dir/rootfs.img ]]; then
        log "building the guest image (cache: $dir)"
        rm -rf "$dir.new"
        SBX_VM_LAYER=$layer "$REPO/scripts/vm/image.sh" "$dir.new" >&2 || return 1
        rm -rf "$dir" && mv "$dir.new" "$dir"
    fi
    echo "$dir"
}

# Boots the guest on one kernel of the image and runs the tests; returns their status.
boot() {
    local img=$1 kernel=$2 build=$3 console rc
    console=$REPO/$build/vm-$kernel.log
    log "booting the cgroup v2 guest on kernel \"$kernel\" (console: ${console#"$REPO"/})"
    # Kernel parameters without a dot reach init as environment variables.
    local append="root=/dev/vda rw console=ttyS0 quiet panic=-1 init=/sbx-vm-init"
    append+=" cgroup_no_v1=all SBX_REPO=$REPO SBX_BUILD=$build CI=${CI:-}"
    rc=0
    # TCG, one host thread: these machines' nested KVM fails on the guest kernel's first
    # instructions, and multi-threaded TCG races with the kernel's live code patching (an
    # int3 oops in the scheduler was seen).
    timeout --foreground -k 10 "$TIMEOUT_S" qemu-system-x86_64 \
        -accel tcg,thread=single -cpu max -smp 2 -m "$MEMORY_MB" \
        -nodefaults -no-reboot -display none -serial stdio -nic none \
        -kernel "$img/$kernel/vmlinuz" -initrd "$img/$kernel/initrd.img" -append "$append" \
        -drive "file=$img/rootfs.img,if=virtio,format=raw,snapshot=on" \
        -virtfs "local,path=$REPO,mount_tag=repo,security_model=passthrough,id=repo" \
        </dev/null 2>&1 | tee "$console" || rc=$?
    if ((rc != 0)); then
        log "qemu failed or timed out (status $rc)"
        return 1
    fi
    rc=$(sed -n "s/^$RESULT_TAG \([0-9]*\).*/\1/p" "$console" | tail -n 1)
    if [[ -z $rc ]]; then
        log "the guest stopped without reporting a result"
        return 1
    fi
    log "kernel \"$kernel\": guest tests exited with status $rc"
    return "$rc"
}

host() {
    local build=${1:-build} img kernel failed=()
    build=$(realpath --relative-to="$REPO" "$(cd "$REPO" && realpath "$build")")
    [[ -x $REPO/$build/tests/unit/test_sandbox ]] || { log "no build in $REPO/$build"; exit 1; }
    img=$(image_dir) || { log "could not build the guest image"; exit 1; }
    for kernel in $KERNELS; do
        boot "$img" "$kernel" "$build" || failed+=("$kernel")
    done
    if ((${#failed[@]} > 0)); then
        log "failed on kernel(s): ${failed[*]}"
        exit 1
    fi
}

if [[ ${1:-} == --guest ]]; then
    guest
else
    host "$@"
fi
