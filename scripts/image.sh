#!/usr/bin/env bash
# The controller image without Docker or a registry: a static kpool (glibc, +crt-static,
# release) on an empty base, built with podman (vfs storage, chroot isolation: no daemon,
# no overlayfs, no base image to pull). Idempotent and quick when nothing changed: cargo
# rebuilds nothing and the image is rebuilt only when its root filesystem changed.
#
#   scripts/image.sh              install podman and runc if missing (apt-get), build kpool
#                                 and the image $KPOOL_IMAGE (default kpool:test), print its size
#   scripts/image.sh rootfs DIR   build kpool and assemble the image's root filesystem in DIR
#                                 (the Dockerfile's build stage runs this too)
#
# The cluster suite runs the image (tests/cluster_image.rs) with
#   podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs run …
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${KPOOL_IMAGE:-kpool:test}
LABEL=dev.kpool.rootfs-digest

log() { echo "image: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
podman_() { as_root podman --storage-driver vfs "$@"; }

# Builds the static binary and prints its path. --target keeps RUSTFLAGS off build scripts
# and proc macros (which must stay dynamic).
binary() {
    local triple
    triple=$(rustc -vV | sed -n 's/^host: //p')
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --target "$triple" --bin kpool >&2
    local bin="${CARGO_TARGET_DIR:-target}/$triple/release/kpool"
    if ! ldd "$bin" 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then
        log "$bin is not static:"
        ldd "$bin" >&2
        exit 1
    fi
    echo "$bin"
}

# Copies $1 to $2 unless it is already there (keeps mtimes, hence the digest, stable).
put() {
    local mode=$1 src=$2 dst=$3
    cmp -s "$src" "$dst" 2>/dev/null || install -m "$mode" "$src" "$dst"
    chmod "$mode" "$dst"
}

rootfs() {
    local dir=$1 bin tmp
    bin=$(binary)
    [ -f /etc/ssl/certs/ca-certificates.crt ] || {
        log "no CA bundle at /etc/ssl/certs/ca-certificates.crt (install ca-certificates)"
        exit 1
    }
    mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/home/nonroot"
    put 0755 "$bin" "$dir/usr/local/bin/kpool"
    put 0644 /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    tmp=$(mktemp -d)
    # Static glibc resolves names itself (files and dns are built in since 2.34); say so.
    printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$tmp/nsswitch.conf"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$tmp/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$tmp/group"
    local f
    for f in nsswitch.conf passwd group; do put 0644 "$tmp/$f" "$dir/etc/$f"; done
    rm -rf "$tmp"
}

ensure_podman() {
    if command -v podman >/dev/null && command -v runc >/dev/null; then return; fi
    log "installing podman and runc"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
}

image() {
    local ctx=target/image digest old new size
    ensure_podman
    rootfs "$ctx/rootfs"
    # Contents, names and modes of every file: what the image's single layer holds.
    digest=$(cd "$ctx/rootfs" && find . -type f -printf '%p %m\n' | sort | sha256sum | cut -c1-16)
    digest+=$(cd "$ctx/rootfs" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    old=$(podman_ image inspect --format "{{.Id}} {{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
    if [ "${old#* }" = "$digest" ]; then
        log "$IMAGE is up to date"
    else
        podman_ build --isolation chroot --target local -f Dockerfile --label "$LABEL=$digest" \
            -t "$IMAGE" "$ctx" >&2
        # The replaced image is untagged now: drop it (vfs keeps full copies of layers).
        new=$(podman_ image inspect --format '{{.Id}}' "$IMAGE")
        if [ -n "$old" ] && [ "${old%% *}" != "$new" ]; then
            podman_ rmi "${old%% *}" >/dev/null 2>&1 || true
        fi
    fi
    size=$(podman_ image inspect --format '{{.Size}}' "$IMAGE")
    echo "image: $IMAGE, $((size / 1024 / 1024)) MiB ($size bytes)"
}

case "${1:-}" in
    "") image ;;
    rootfs) rootfs "${2:?usage: scripts/image.sh rootfs DIR}" ;;
    *) echo "usage: scripts/image.sh [rootfs DIR]" >&2; exit 2 ;;
esac
