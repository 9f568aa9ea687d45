#!/usr/bin/env bash
# Builds wsnotify's image without a registry and prints its name
# (WSNOTIFY_IMAGE, default wsnotify:local).
#
#     bash scripts/wsnotify-image.sh [BINARY]
#
# BINARY defaults to target/release/wsnotify (built with cargo if missing).
# The image is deploy/Dockerfile's runtime stage, FROM scratch instead of
# distroless: the binary, the libraries it links (glibc, libgcc) and the
# dynamic loader, copied from this machine. Rebuilt on every run (it takes
# a second); the tests pass the binary they were built with.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/rootfs.sh

image="${WSNOTIFY_IMAGE:-wsnotify:local}"
binary="${1:-target/release/wsnotify}"
if [ ! -x "$binary" ]; then
    echo "wsnotify-image: building $binary" >&2
    cargo build --release --locked --bin wsnotify >&2
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
add_libraries "$root" "$binary"
echo "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin" > "$root/etc/passwd"
echo "nonroot:x:65532:" > "$root/etc/group"
# Name resolution for REDIS_URL=redis://redis:6379 (glibc reads these; its
# DNS code is in libc itself since 2.34).
echo "hosts: files dns" > "$root/etc/nsswitch.conf"

# The runtime stage of deploy/Dockerfile, from scratch.
{
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    sed -n '/^FROM .* AS runtime$/,$p' deploy/Dockerfile |
        sed -e '1d' -e 's|^COPY --from=build [^ ]* |COPY wsnotify-binary |'
} > "$ctx/Dockerfile"
# The binary as built, for the COPY that the Dockerfile takes from its build
# stage (same destination path).
cp -L "$binary" "$ctx/wsnotify-binary"
grep -q '^COPY wsnotify-binary ' "$ctx/Dockerfile" || {
    echo "wsnotify-image: deploy/Dockerfile's runtime stage has no COPY --from=build line" >&2
    exit 1
}
build_image "$ctx" "$image"
echo "$image"
