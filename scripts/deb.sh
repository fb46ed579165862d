#!/usr/bin/env bash
# Builds sbx_<version>_<arch>.deb from a release build installed into a staging tree, with
# dpkg-deb (no debhelper: the package is one binary and a few files).
#
#   scripts/deb.sh [OUTDIR]     DEB_VERSION overrides the version (meson's project version)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO}
BUILD="$REPO/build-deb"
STAGE="$BUILD/staging"

log() { printf 'deb: %s\n' "$*" >&2; }

if [[ ! -f $BUILD/build.ninja ]]; then
    meson setup "$BUILD" "$REPO" --prefix=/usr --buildtype=release -Db_ndebug=true >/dev/null
fi
ninja -C "$BUILD" sbx >/dev/null
VERSION=${DEB_VERSION:-$(meson introspect "$BUILD" --projectinfo |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])')}
ARCH=$(dpkg --print-architecture)

rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN"
install -D -m 0755 "$BUILD/sbx" "$STAGE/usr/bin/sbx"
strip --strip-unneeded "$STAGE/usr/bin/sbx"
install -D -m 0644 "$REPO/debian/sbx.service" "$STAGE/lib/systemd/system/sbx.service"
install -D -m 0644 "$REPO/debian/sbx.conf" "$STAGE/etc/sbx/sbx.conf"
install -D -m 0644 "$REPO/scripts/sbx-completion.bash" \
    "$STAGE/usr/share/bash-completion/completions/sbx"
for doc in README.md SECURITY.md docs/operations.md docs/configuration.md docs/architecture.md; do
    install -D -m 0644 "$REPO/$doc" "$STAGE/usr/share/doc/sbx/$(basename "$doc")"
done
# The built-in templates' definitions and their builder, in the layout of the source tree that
# templates.sh expects (the same files give the same layer keys as the binary's), and the
# service that runs it before sbx.service.
(cd "$REPO" && find templates src/jupyter/java src/jupyter/javascript src/jupyter/python \
    -type f -not -path '*/node_modules/*') | while read -r f; do
    install -D -m 0644 "$REPO/$f" "$STAGE/usr/share/sbx/$f"
done
install -D -m 0755 "$REPO/scripts/templates.sh" "$STAGE/usr/share/sbx/scripts/templates.sh"
install -D -m 0755 "$REPO/debian/build-templates" "$STAGE/usr/share/sbx/build-templates"
install -D -m 0644 "$REPO/debian/sbx-templates.service" \
    "$STAGE/lib/systemd/system/sbx-templates.service"
install -m 0755 "$REPO/debian/postinst" "$REPO/debian/prerm" "$REPO/debian/postrm" "$STAGE/DEBIAN/"
echo /etc/sbx/sbx.conf >"$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$REPO/debian/control.in" >"$STAGE/DEBIAN/control"

DEB="$OUT/sbx_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >/dev/null
log "built $DEB"
echo "$DEB"
