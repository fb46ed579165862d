#!/usr/bin/env bash
# Builds the guest of the cgroup v2 test VM (scripts/vm/run.sh): a Debian 12 root with the
# runtime libraries of `sbx`, the tools of the sandbox template, and two kernels: the newest
# Debian has and Debian 12's own.
#
#   scripts/vm/image.sh OUT_DIR     writes OUT_DIR/rootfs.img and, for each of the kernels
#                                   "current" and "debian12", OUT_DIR/KERNEL/{vmlinuz,initrd.img}
#
# With SBX_VM_LAYER set to a layer of the host's layer cache (<cache>/<key>, the base
# template's), the image carries a copy of it at the same path: the guest's sandboxes run on it
# (a 9p share cannot be idmapped, so the layer must be on the guest's own ext4).
#
# Run as root (debootstrap, chroot). Takes about two minutes; run.sh keeps the result in a
# cache keyed by this file's hash, so it is rebuilt only when this file changes.
set -euo pipefail

MIRROR=http://deb.debian.org/debian
SUITE=bookworm
# What `sbx` links against, plus the template's expected tools (bash, coreutils, sudo, curl,
# git, python3), kmod for the 9p modules, e2fsprogs for the per-sandbox disk images and
# ca-certificates, without which the SDK's HTTP client refuses to start; nftables (the nft the
# spawner test reads the table with), lxcfs (the sandboxes' /proc views) and microsocks (the
# SOCKS5 server of the network probes).
PACKAGES=(
    sudo curl git python3 ca-certificates kmod iproute2 procps e2fsprogs util-linux
    libuv1 libjansson4 libhttp-parser2.9 libsqlite3-0 libseccomp2 libssl3 libzmq5 libcurl4
    zlib1g libnftables1 initramfs-tools nftables lxcfs microsocks
)
# Where the newest kernel comes from: newer than 6.15, where sbx hands overlayfs its layers
# as fds of detached mounts.
KERNEL_SUITE=trixie-backports
IMAGE_MB=4096

log() { printf 'vm-image: %s\n' "$*" >&2; }

(($# == 1)) || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$1
[[ $(id -u) == 0 ]] || { log "needs root"; exit 1; }
work=$(mktemp -d /var/tmp/sbx-vm-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

log "debootstrap $SUITE into $root"
debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# Two kernels. debian12: Debian 12's own (6.1), where sbx stages its overlays (rootfs.c).
log "installing Debian 12's kernel"
chroot "$root" /bin/sh -c "apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        linux-image-amd64 && apt-get clean" >"$work/kernel.log" 2>&1 ||
    { tail -n 30 "$work/kernel.log" >&2; exit 1; }
mkdir -p "$out/debian12"
cp "$root"/boot/vmlinuz-* "$out/debian12/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/debian12/initrd.img"

# current: the newest of trixie-backports, unpacked (its meta packages want a trixie
# userland), with an initramfs made by the guest's own initramfs-tools.
log "fetching the newest trixie-backports kernel"
index=$(curl -fsSL --retry 3 "$MIRROR/dists/$KERNEL_SUITE/main/binary-amd64/Packages.xz" | xz -d)
field() { # package field: the value of "field" in the stanza of package "package"
    awk -v p="Package: $1" -v f="$2: " '$0 == p {s = 1} s && /^$/ {exit}
        s && index($0, f) == 1 {print substr($0, length(f) + 1)}' <<<"$index"
}
release=$(field linux-image-amd64 Depends | grep -o 'linux-image-[^ ,]*-amd64' | head -n1)
release=${release#linux-image-}
[[ -n $release ]] || { log "no linux-image-amd64 in $KERNEL_SUITE"; exit 1; }
# binary: vmlinuz; modules; base: its config and module lists, which mkinitramfs reads.
for pkg in "linux-binary-$release" "linux-modules-$release" "linux-base-$release"; do
    file=$(field "$pkg" Filename)
    [[ -n $file ]] || { log "no $pkg in $KERNEL_SUITE"; exit 1; }
    curl -fsSL --retry 3 -o "$work/$pkg.deb" "$MIRROR/$file"
    dpkg-deb -x "$work/$pkg.deb" "$root"
done
log "kernel $release; making its initramfs"
kdir=/usr/lib/modules/$release
# Bookworm's mkinitramfs reads the config where older kernel packages put it.
cp "$root$kdir/config" "$root/boot/config-$release"
chroot "$root" /bin/sh -c "depmod $release && mkinitramfs -o /boot/initrd.img $release" \
    >"$work/initramfs.log" 2>&1 || { tail -n 30 "$work/initramfs.log" >&2; exit 1; }

# PID 1 of the guest: mounts the host's checkout (9p, tag "repo") at the path the host gave
# on the kernel command line and hands over to run.sh's guest half, which lives there, so
# that changing the test steps does not need a new image.
cat >"$root/sbx-vm-init" <<'INIT'
#!/bin/sh
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
# 9p for the checkout; loop for the sandboxes' disk images (no udev here to load it).
modprobe 9pnet_virtio && modprobe 9p && modprobe loop
modprobe fuse 2>/dev/null # lxcfs; built into some kernels
mkdir -p "$SBX_REPO"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=loose repo "$SBX_REPO" &&
    exec /bin/bash "$SBX_REPO/scripts/vm/run.sh" --guest
echo "sbx-vm-init: cannot mount the checkout at $SBX_REPO" >&2
echo o >/proc/sysrq-trigger
INIT
chmod 0755 "$root/sbx-vm-init"

mkdir -p "$out/current"
cp "$root$kdir/vmlinuz" "$out/current/vmlinuz"
cp "$root/boot/initrd.img" "$out/current/initrd.img"
rm -rf "$root"/boot/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*
if [[ -n ${SBX_VM_LAYER:-} ]]; then
    log "copying the layer $SBX_VM_LAYER into the image"
    mkdir -p "$root$(dirname "$SBX_VM_LAYER")"
    chmod 0700 "$root$(dirname "$SBX_VM_LAYER")"
    cp -a "$SBX_VM_LAYER" "$root$SBX_VM_LAYER"
    IMAGE_MB=$((IMAGE_MB + $(du -sm "$SBX_VM_LAYER" | cut -f1)))
fi
log "making the root filesystem image"
rm -f "$out/rootfs.img"
mkfs.ext4 -q -F -L sbx-vm -d "$root" "$out/rootfs.img" "${IMAGE_MB}M"
log "done: $out"
