#!/usr/bin/env bash
# Builds the layers of sbx's built-in templates into the host-wide layer cache, once per
# definition (templates/<name>/), with progress on stderr. `sbx serve` imports them into its
# state dir at start (src/sandbox/layers.c); nothing here is needed at run time.
#
#   scripts/templates.sh build    build whatever the cache lacks (base, then code-interpreter)
#   scripts/templates.sh key NAME print the key of NAME's layer (what the daemon looks for)
#   scripts/templates.sh prune    remove the cache's layers of other definitions (older
#                                 checkouts; daemons keep the copies they imported)
#   scripts/templates.sh header   the keys as C macros (src/spawner/layer_keys.h, by meson), and
#                                 the base's recipe, from which the spawner makes Debian roots of
#                                 other suites (fromDebianImage)
#
# Cache: $SBX_LAYER_CACHE (default /var/cache/sbx/layers)/<key>/ with tree/ (the layer:
# files owned by sandbox uids, overlayfs whiteouts and opaque dirs kept) and info (what it is,
# how long it took). A layer's key is the SHA-256 of its definition and its parent's key, so a
# changed definition builds a new layer and an unchanged one is never rebuilt. Built in
# <key>.new and renamed into place: a crash never leaves a layer that looks finished.
#
#   base              Debian (SBX_SUITE, default trixie) by mmdebstrap: templates/base/, and
#                     the CAs the host adds (/usr/local/share/ca-certificates)
#   code-interpreter  on base, in a chroot over an overlay: templates/code-interpreter/
#                     plus the kernels' support files of src/jupyter/
# Run as root. Both need Debian's mirror; code-interpreter also PyPI, npm and Maven Central.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SBX_LAYER_CACHE:-/var/cache/sbx/layers}
SUITE=trixie
MIRROR=${SBX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LAYER_FORMAT=1 # bump when how layers are made changes, so that all are rebuilt

log() { printf 'templates: %s\n' "$*" >&2; }
die() {
    printf 'templates: error: %s\n' "$*" >&2
    exit 1
}

# The files whose content defines each layer (sorted, relative to the repo).
definition_files() {
    case $1 in
    base) (cd "$REPO" && find templates/base -type f | LC_ALL=C sort) ;;
    code-interpreter)
        (cd "$REPO" && find templates/code-interpreter -type f | LC_ALL=C sort
            echo src/jupyter/python/sbx_e2b.py
            echo src/jupyter/java/SbxJavaKernel.java
            printf 'src/jupyter/javascript/%s\n' kernel.js package-lock.json package.json \
                transform.js)
        ;;
    *) die "unknown template $1" ;;
    esac
}

parent_of() {
    case $1 in
    code-interpreter) echo base ;;
    *) echo "" ;;
    esac
}

# The CA certificates this host adds to Debian's (a site's TLS-intercepting proxy, an internal
# CA): the base layer trusts them too, as sandboxes on the host's own files did.
host_cas() {
    find /usr/local/share/ca-certificates -maxdepth 1 -type f -name '*.crt' 2>/dev/null |
        LC_ALL=C sort
}

key() {
    local name=$1 parent f
    parent=$(parent_of "$name")
    {
        echo "sbx-layer-format $LAYER_FORMAT $name suite=$SUITE"
        [[ -n $parent ]] && echo "parent $(key "$parent")"
        while read -r f; do
            printf '%s %s\n' "$f" "$(sha256sum <"$REPO/$f" | cut -d' ' -f1)"
        done < <(definition_files "$name")
        if [[ $name == base ]]; then
            while read -r f; do
                printf 'host-ca %s %s\n' "$(basename "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
            done < <(host_cas)
        fi
    } | sha256sum | cut -d' ' -f1
}

# Mounts what a chroot build needs below root ($1), in the caller's private mount namespace.
chroot_mounts() {
    local root=$1
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
    mount --rbind -o ro /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount -t tmpfs -o mode=0755 tmpfs "$root/run"
    # The host's resolver and CA bundle (which may hold a site's TLS proxy CA) over the
    # layer's own files for the build only, never written into the layer.
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    mount --bind /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

build_base() {
    local out=$1 pkgs
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (apt-get install mmdebstrap)"
    pkgs=$(grep -v '^ *#' "$REPO/templates/base/packages" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
    mkdir -p "$out/tree"
    # --mode=root: files owned by the uids they have inside the sandbox (the layer stores
    # ownership sandbox-relative; sandboxes see it through an idmapped mount).
    mmdebstrap --mode=root --variant=apt --format=directory --components=main \
        --include="$pkgs" \
        --customize-hook='find /usr/local/share/ca-certificates -maxdepth 1 -type f -name "*.crt" \
            -exec cp {} "$1/usr/local/share/ca-certificates/" \; && chroot "$1" update-ca-certificates' \
        --customize-hook='chroot "$1" /bin/sh -s <'"$REPO/templates/base/customize.sh" \
        "$SUITE" "$out/tree" "$MIRROR" >&2
}

# A layer on top of parent_tree: the upper dir of an overlay in which build.sh ran (chroot,
# as root, with the host's network). Redirects, metacopy and the inode index off, so the upper
# holds only files, whiteouts and opaque dirs: what overlayfs takes as a lower layer.
build_on() {
    local out=$2 parent_tree=$3 dir="$REPO/templates/$1"
    mkdir -p "$out/tree" "$out/work" "$out/merged"
    unshare --mount --propagation private bash -euo pipefail -c '
        out=$1 parent=$2 dir=$3 repo=$4
        mount -t overlay overlay \
            -o "lowerdir=$parent,upperdir=$out/tree,workdir=$out/work,redirect_dir=off,index=off,metacopy=off,xino=off" \
            "$out/merged"
        '"$(declare -f chroot_mounts)"'
        chroot_mounts "$out/merged"
        mkdir -p "$out/merged/tmp/def/src"
        cp -r "$dir/." "$out/merged/tmp/def/"
        cp -r "$repo/src/jupyter" "$out/merged/tmp/def/src/"
        rm -rf "$out/merged/tmp/def/src/jupyter/javascript/node_modules" # a checkout'"'"'s own
        # A clean environment but for the host'"'"'s proxy settings, if any.
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
            ${no_proxy:+no_proxy=$no_proxy} \
            chroot "$out/merged" /bin/bash -euo pipefail /tmp/def/build.sh
    ' build "$out" "$parent_tree" "$dir" "$REPO" >&2
    rm -rf "$out/work" "$out/merged"
    # Mount points of the build, empty dirs in the upper: keep them out of the layer.
    rm -rf "$out/tree/tmp" "$out/tree/run"
}

build_layer() {
    local name=$1 k dir parent start secs size
    k=$(key "$name")
    dir="$CACHE/$k"
    if [[ -f $dir/info ]]; then
        log "$name: cached ($k)"
        return
    fi
    parent=$(parent_of "$name")
    [[ -z $parent ]] || build_layer "$parent"
    log "$name: building layer $k (several minutes on the first run)"
    mkdir -p "$CACHE"
    # Root-only: every sandbox of a template runs what its layers hold.
    chmod 0700 "$CACHE"
    rm -rf "$dir.new"
    mkdir -p "$dir.new"
    start=$(date +%s)
    if [[ -z $parent ]]; then
        build_base "$dir.new"
    else
        build_on "$name" "$dir.new" "$CACHE/$(key "$parent")/tree"
    fi
    secs=$(($(date +%s) - start))
    size=$(du -sx --block-size=1M "$dir.new/tree" | cut -f1)
    printf 'name %s\nparent %s\nsuite %s\nbuild_seconds %s\nsize_mb %s\nbuilt %s\n' \
        "$name" "${parent:+$(key "$parent")}" "$SUITE" "$secs" "$size" "$(date -u +%FT%TZ)" \
        >"$dir.new/info"
    chmod 0755 "$dir.new" "$dir.new/tree"
    mv -T "$dir.new" "$dir"
    log "$name: built in ${secs}s, ${size} MiB"
}

main() {
    case ${1:-} in
    build)
        [[ $(id -u) == 0 ]] || die "run as root"
        mkdir -p "$CACHE"
        # One build at a time on a host (two setups at once would share a .new dir); what an
        # interrupted build left is dropped.
        exec 9>"$CACHE/.lock"
        flock 9
        rm -rf "$CACHE"/*.new
        build_layer base
        build_layer code-interpreter
        ;;
    prune)
        [[ $(id -u) == 0 ]] || die "run as root"
        local keep=" $(key base) $(key code-interpreter) " d
        exec 9>"$CACHE/.lock"
        flock 9
        for d in "$CACHE"/*; do
            [[ -d $d && $keep != *" $(basename "$d") "* ]] || continue
            log "removing $(basename "$d")"
            rm -rf "$d"
        done
        ;;
    key)
        (($# == 2)) || die "usage: $0 key NAME"
        key "$2"
        ;;
    header)
        printf '/* Generated by scripts/templates.sh header: the layer keys of the built-in templates. */\n'
        printf '#define SBX_LAYER_KEY_BASE "%s"\n' "$(key base)"
        printf '#define SBX_LAYER_KEY_CODE_INTERPRETER "%s"\n' "$(key code-interpreter)"
        printf '#define SBX_BASE_PACKAGES "%s"\n' \
            "$(grep -v '^ *#' "$REPO/templates/base/packages" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')"
        printf '#define SBX_BASE_CUSTOMIZE \\\n'
        sed 's/\\/\\\\/g; s/"/\\"/g; s/^/    "/; s/$/\\n" \\/' "$REPO/templates/base/customize.sh"
        printf '    ""\n'
        ;;
    *) die "usage: $0 build | prune | key NAME | header" ;;
    esac
}

main "$@"
